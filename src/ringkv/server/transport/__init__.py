"""The wire: calls to other members, their batching, security, and the
server-side gRPC glue (dispatch, error statuses, core values as messages)."""
