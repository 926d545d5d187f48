"""gRPC metadata keys that are part of ringkv's wire contract."""

STATUS_DETAILS = "grpc-status-details-bin"
"""Trailer carrying a serialized google.rpc.Status with an ErrorInfo (the
standard gRPC richer error model)."""

RING_EPOCH = "ringkv-epoch"
"""Trailer of every kv.KeyValue answer: the answering node's ring epoch."""

FORWARD_HOPS = "ringkv-hops"
"""Request header: how many times a write was forwarded between nodes."""
