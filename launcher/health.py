"""Waiting for a gRPC process to report SERVING through the standard health service."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launcher.ports import PORT_IN_USE_EXIT, PortTaken


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


def wait_listening(
    address: str,
    process: subprocess.Popen,
    timeout_s: float,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Until the process on `address` answers its health service, whatever the status: it binds every
    port it was given before it answers, so it then holds them all. PortTaken when it exited because
    one was taken; RuntimeError when it exited for another reason."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = process.poll()  # not alive(): that reaps the child and loses its exit status
        if code == PORT_IN_USE_EXIT:
            raise PortTaken(f"{address}: a port it was given is taken")
        if code is not None:
            raise RuntimeError(f"{address}: process exited with status {code} during start-up")
        if health_status(address, credentials=credentials) != "UNREACHABLE":
            return
        time.sleep(0.1)
    raise TimeoutError(f"{address}: not listening after {timeout_s:.0f} s")
