"""One service process on reserved loopback ports: what tests and benchmarks start a stage with."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc

from launcher.health import wait_listening, wait_serving
from launcher.ports import ATTEMPTS, reserve_port, retry_on_port_taken
from launcher.processes import spawn, stop_group, tail
from launcher.stack import REPO_ROOT


class ServiceProcess:
    """One service (`python -m <module>`), started at once and, with `wait`, waited for until SERVING;
    `stop` sends SIGTERM, then SIGKILL.

    Its port (and, with `metrics`, its metrics port) are reserved (`launcher/ports.py`); should one be
    taken all the same, it is started again on new ones. A `port` the caller gives is kept as it is.
    """

    def __init__(
        self,
        module: str,
        args: list[str],
        log: Path,
        wait: bool = True,
        env: dict[str, str] | None = None,
        port: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metrics: bool = False,
        timeout_s: float = 60.0,
    ) -> None:
        self.log = log
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}

        def start() -> None:
            self.port = port or reserve_port()
            self.metrics_port = reserve_port() if metrics else 0
            flags = ["--port", str(self.port), *(["--metrics-port", str(self.metrics_port)] if metrics else [])]
            self.process = spawn([sys.executable, "-m", module, *flags, *args], log, env=environment, cwd=REPO_ROOT)
            if wait:
                wait_listening(self.address, self.process, timeout_s, credentials)

        try:
            retry_on_port_taken(start, 1 if port is not None else ATTEMPTS)
            if wait:
                wait_serving(self.address, timeout_s, lambda: self.process.poll() is None, credentials)
        except (RuntimeError, TimeoutError) as exc:  # PortTaken included, once out of attempts
            self.stop()
            raise RuntimeError(f"{module}: {exc}\n{tail(log)}") from None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_group(self.process.pid)
        self.process.wait(timeout=5)
