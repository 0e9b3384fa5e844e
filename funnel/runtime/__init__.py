"""Shared service runtime: config, gRPC server bootstrap, health, metrics, logging, deadlines."""
