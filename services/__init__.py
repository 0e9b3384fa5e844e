"""The three funnel stages, each its own gRPC service; none imports another."""
