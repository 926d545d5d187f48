"""A leader watcher: polls every node's view of the leadership during a fault run.

From the host, which reaches every node through the lab's partitions, it
asks each node ``GetClusterState`` (without the token ranges) a few times a
second, every node of a round at once, and keeps who each node says leads
and in which term (``ringkv.core.history.LeaderSample``) for the
single-leader checker. Calls run on one long-lived channel per node with a
short deadline; a node that does not answer (killed, paused) gives no
sample.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import grpc

from ringkv.api import kv_pb2, kv_pb2_grpc
from ringkv.core.history import LeaderSample
from tests.support.nodes import NodeProcess

PERIOD_S = 0.1
TIMEOUT_S = 0.3


class LeaderWatcher:
    def __init__(
        self, nodes: Callable[[], Sequence[NodeProcess]], now: Callable[[], float]
    ) -> None:
        self._nodes = nodes
        self._now = now
        self._samples: list[LeaderSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watcher", daemon=True)
        self._channels: dict[str, tuple[grpc.Channel, kv_pb2_grpc.ClusterStub]] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[LeaderSample]:
        """Stop polling; every sample taken."""
        self._stop.set()
        self._thread.join(timeout=10)
        for channel, _ in self._channels.values():
            channel.close()
        return list(self._samples)

    def _run(self) -> None:
        request = kv_pb2.GetClusterStateRequest(omit_ranges=True)
        while not self._stop.wait(PERIOD_S):
            sent = self._now()
            calls = [
                (node.node_id, self._stub(node.address).GetClusterState.future(
                    request, timeout=TIMEOUT_S
                ))
                for node in self._nodes()
                if node.port
            ]  # fmt: skip
            for node_id, call in calls:
                try:
                    answer = call.result()
                except grpc.RpcError:
                    continue
                self._samples.append(
                    LeaderSample(self._now(), node_id, answer.leader_id, answer.term, sent)
                )

    def _stub(self, address: str) -> kv_pb2_grpc.ClusterStub:
        entry = self._channels.get(address)
        if entry is None:
            channel = grpc.insecure_channel(address)
            entry = self._channels[address] = (channel, kv_pb2_grpc.ClusterStub(channel))
        return entry[1]
