"""The data path: coordinating reads and writes, this node's replica, and the
background work that keeps replicas equal (hints, anti-entropy, range moves)."""
