"""Scans of a real cluster: every live key under a prefix exactly once, across
pages, with a node killed between pages; through the SDK and ``ringkv ls``."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import ringkv
from ringkv.core.errors import InvalidArgument
from tests.integration.test_cli import ringkv_cli
from tests.support.nodes import ClusterFactory, NodeProcess, wait_for, wait_for_leader

KEYS = 10_000
BATCH = 500


def write_keys(client: ringkv.Client, keys: list[str]) -> None:
    for first in range(0, len(keys), BATCH):
        client.set_many({key: f"v-{key}" for key in keys[first : first + BATCH]})


def test_a_scan_returns_each_live_key_once_across_pages_with_a_node_killed(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3)
    wait_for_leader(members)
    endpoints = [node.address for node in members]
    wanted = [f"scan/{i:05d}" for i in range(KEYS)]
    deleted = wanted[::97]
    expiring = [f"scan/ttl-{i}" for i in range(50)]
    with ringkv.Client(endpoints, timeout=15.0) as client:
        write_keys(client, wanted)
        write_keys(client, [f"other/{i}" for i in range(300)])
        client.set_many(dict.fromkeys(expiring, "soon gone"), ttl=1.0)
        for key in deleted:
            client.delete(key)
        wait_for(
            lambda: all(client.get(key) is None for key in expiring),
            timeout=30.0,
            what="the TTL'd keys to expire",
        )
        live = set(wanted) - set(deleted)

        seen: Counter[str] = Counter()
        cursor = b""
        pages = 0
        while True:
            page = client.scan_page("scan/", cursor, limit=700, consistency="quorum")
            pages += 1
            for entry in page.entries:
                seen[entry.key] += 1
                assert entry.value == f"v-{entry.key}".encode()
                assert entry.version > 0
            if pages == 3:
                # Between pages: the next ones must come from the others.
                members[1].kill()
            if not page.next_cursor:
                break
            cursor = page.next_cursor

    assert set(seen) == live
    assert max(seen.values()) == 1
    assert pages >= KEYS // 1000


def test_a_scan_at_one_with_keys_only_and_a_limit(cluster: ClusterFactory) -> None:
    members = cluster(3)
    wait_for_leader(members)
    with ringkv.Client([node.address for node in members]) as client:
        write_keys(client, [f"k/{i}" for i in range(120)])
        entries = list(client.scan("k/", limit=50, keys_only=True, consistency="one"))
        everything = list(client.scan("k/", consistency="all"))
        with pytest.raises(InvalidArgument, match="LINEARIZABLE"):
            client.scan_page("k/", consistency="linearizable")
        with pytest.raises(InvalidArgument, match="cursor"):
            client.scan_page("k/", b"not a cursor")
    assert len(entries) == 50
    assert all(entry.value == b"" for entry in entries)
    assert sorted(entry.key for entry in everything) == sorted(f"k/{i}" for i in range(120))
    # Token order: the first 50 of a scan are the first 50 of the whole.
    assert [e.key for e in entries] == [e.key for e in everything[:50]]


def test_ringkv_ls_prints_keys_and_json_lines(cluster: ClusterFactory) -> None:
    members: list[NodeProcess] = cluster(3)
    wait_for_leader(members)
    with ringkv.Client(members[0].address) as client:
        client.set("app/a", "1")
        client.set("app/b", b"\xff\x00")
        client.set("zzz", "not listed")
    endpoint = ",".join(node.address for node in members)

    plain = ringkv_cli("ls", "app/", "--endpoint", endpoint)
    assert plain.returncode == 0, plain.stderr
    assert sorted(plain.stdout.decode().splitlines()) == ["app/a", "app/b"]

    lines = ringkv_cli("ls", "app/", "--values", "--json", "--endpoint", endpoint)
    assert lines.returncode == 0, lines.stderr
    documents = sorted(
        (json.loads(line) for line in lines.stdout.decode().splitlines()), key=lambda d: d["key"]
    )
    assert [d["key"] for d in documents] == ["app/a", "app/b"]
    assert documents[0]["value"] == "1"
    assert documents[1]["value_base64"] == "/wA="
    assert all(d["version"] > 0 for d in documents)

    limited = ringkv_cli("ls", "--limit", "1", "--endpoint", endpoint)
    assert limited.returncode == 0, limited.stderr
    assert len(limited.stdout.decode().splitlines()) == 1
