"""Three seed-style nodes form one cluster."""

from __future__ import annotations

import ringkv
from tests.support.nodes import ClusterFactory


def test_a_key_set_through_one_node_reads_back_through_every_node(
    cluster: ClusterFactory,
) -> None:
    members = cluster(3, replicas=2)
    with ringkv.Client(members[0].address, token_aware=False) as writer:
        version = writer.set("shared", b"value")
    for node in members:
        with ringkv.Client(node.address, token_aware=False) as reader:
            entry = reader.get("shared")
            assert entry is not None
            assert (entry.value, entry.version) == (b"value", version)
