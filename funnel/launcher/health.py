"""Waiting for a gRPC process to report SERVING through the standard health service."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def health_status(
    address: str, service: str = "", timeout_s: float = 1.0, credentials: grpc.ChannelCredentials | None = None
) -> str:
    """SERVING / NOT_SERVING / UNKNOWN / SERVICE_UNKNOWN, or UNREACHABLE; over TLS with `credentials`."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_serving(
    address: str,
    timeout_s: float,
    still_running: Callable[[], bool] = lambda: True,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    status = "UNREACHABLE"
    while time.monotonic() < deadline:
        if not still_running():
            raise RuntimeError(f"{address}: process exited before it was SERVING")
        status = health_status(address, credentials=credentials)
        if status == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{address}: not SERVING after {timeout_s:.0f} s (last status {status})")
