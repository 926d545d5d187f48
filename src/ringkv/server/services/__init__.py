"""The gRPC services this node serves: the client API, the member API, the
replica API, the admin API, and the metrics endpoint."""
