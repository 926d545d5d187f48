"""Where a node takes members' calls: its advertised port plus the cluster's
member port offset (``--peer-port-offset``), as Redis Cluster's bus port is its
client port plus 10000. Nodes dial it for every node-to-node call; operators
holding a member certificate use it for operator calls."""

from __future__ import annotations


def member_address(address: str, offset: int) -> str:
    """``host:port`` (or ``[v6]:port``) with ``offset`` added to the port."""
    if offset == 0:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return f"{host}:{int(port) + offset}"
