"""Typed errors that carry their gRPC status, so handlers raise meaning and not codes."""

from __future__ import annotations

import grpc


class FunnelError(Exception):
    """Base class: an error the client should see with a specific status and message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(FunnelError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FunnelError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(FunnelError):
    """A dependency (Triton, an index, a stage) cannot answer right now; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FunnelError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(FunnelError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(FunnelError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(FunnelError):
    """The caller is known but may not do this (a scope it lacks, another user's data)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class AlreadyExists(FunnelError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FunnelError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ConfigError(ValueError):
    """Raised at start-up when configuration is missing or invalid; the process exits."""
