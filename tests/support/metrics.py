"""Scraping a node's Prometheus metrics (``--metrics-addr``) over real HTTP."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.nodes import NodeProcess

METRICS = ("--metrics-addr", "127.0.0.1:0")
"""Node flags that serve metrics on a free port (given in the "serving" log event)."""

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One scrape of a node's /metrics."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def get(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a labelled series not yet created."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` that has ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= set(sample_labels)
        )


def metrics_port(node: NodeProcess) -> int:
    """The metrics port of the node's current run, from its "serving" event."""
    for event in node.events():
        if event.get("msg") == "serving":
            return int(event["metrics_port"])
    raise AssertionError(f"{node.node_id} logged no serving event\n{node.log_text()}")


def scrape(node: NodeProcess) -> Scrape:
    url = f"http://127.0.0.1:{metrics_port(node)}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode())
