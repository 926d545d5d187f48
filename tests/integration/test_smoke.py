"""A node process serves the client API end to end."""

from __future__ import annotations

import ringkv
from tests.support.nodes import NodeFactory


def test_set_get_delete_roundtrip(nodes: NodeFactory) -> None:
    node = nodes("node1")
    with ringkv.Client(node.address) as client:
        version = client.set("greeting", b"hello")
        entry = client.get("greeting")
        assert entry is not None
        assert (entry.value, entry.version) == (b"hello", version)
        assert client.delete("greeting") is True
        assert client.get("greeting") is None
        assert client.delete("greeting") is False
    assert node.stop() == 0
