"""Ports for processes on this machine's loopback, handed out so that no two users race for one.

Binding port 0, closing the socket and passing the number on is a race: the number comes from the
kernel's ephemeral range, which every outgoing connection on the machine draws its local port from,
so another socket can take it before the service binds it. Ports here come from a range outside the
ephemeral one, which no outgoing connection uses, and each is reserved across every process on the
machine that uses this module (two test runs at once, a benchmark beside a test run) by a POSIX
byte-range lock on one shared file: the lock on byte N is port N, held until this process exits,
when the kernel releases it. A port is also checked free by binding it before it is handed out.

Something outside this scheme can still bind an explicit port in the range; a process that finds
its port taken exits with `PORT_IN_USE_EXIT` (the runtime's contract) or logs that the address is in
use (Triton, Redis), and whoever started it starts it again on new ports (`retry_on_port_taken`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from funnel.runtime.exits import PORT_IN_USE as PORT_IN_USE_EXIT

__all__ = [
    "PORT_IN_USE_EXIT",
    "PortTaken",
    "bind_reserved_port",
    "reserve_port",
    "reserve_port_pair",
    "retry_on_port_taken",
    "says_port_taken",
    "start_server",
]

T = TypeVar("T")
# Below the Linux default ephemeral range (32768-60999) and clear of the fixed ports `make up` uses
# (8000-8002, 6390, 9101+, 50051+).
PREFERRED = range(20000, 32000)
LOCK_FILE = Path(tempfile.gettempdir()) / "funnel-ports.lock"
ATTEMPTS = 3


class PortTaken(RuntimeError):
    """A process could not bind a port it was given."""


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    try:
        low, high = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default
    return range(low, high + 1)


def usable_ports(ephemeral: range) -> list[int]:
    """The preferred range minus the ephemeral one; above it where too little is left below."""
    ports = [p for p in PREFERRED if p not in ephemeral]
    if len(ports) < 1000:
        ports = [p for p in range(ephemeral.stop, 65536) if p not in ephemeral]
    if len(ports) < 1000:
        raise RuntimeError(f"the ephemeral range {ephemeral.start}-{ephemeral.stop - 1} leaves no ports to reserve")
    return ports


class _Reservations:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._fd: int | None = None  # opened once: closing any descriptor of the file drops every lock
        self._ports: list[int] = []
        self._next = 0
        self.held: set[int] = set()

    def reserve(self) -> int:
        with self._mutex:
            self._open()
            for _ in range(len(self._ports)):
                port = self._ports[self._next]
                self._next = (self._next + 1) % len(self._ports)
                if port in self.held or not self._lock(port):
                    continue
                self.held.add(port)  # kept even when the bind check fails: someone else uses it
                if bindable(port):
                    return port
            raise RuntimeError(f"no free port left in {self._ports[0]}-{self._ports[-1]}")

    def reserve_pair(self, offset: int) -> int:
        """A port p with p + offset reserved too (Redis Cluster's bus listens on its port + 10000)."""
        with self._mutex:
            self._open()
            ephemeral = ephemeral_range()
            for _ in range(len(self._ports)):
                port = self._ports[self._next]
                self._next = (self._next + 1) % len(self._ports)
                other = port + offset
                if other >= 65536 or other in ephemeral or {port, other} & self.held:
                    continue
                if not self._lock(port):
                    continue
                if not self._lock(other):
                    self._unlock(port)
                    continue
                if bindable(port) and bindable(other):
                    self.held.update((port, other))
                    return port
                self.held.update((port, other))  # someone else uses one: never hand either out
            raise RuntimeError(f"no free pair of ports {offset} apart left in {self._ports[0]}-{self._ports[-1]}")

    def _open(self) -> None:
        if self._fd is None:
            self._fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
            self._ports = usable_ports(ephemeral_range())
            self._next = os.getpid() % len(self._ports)  # runs at once start apart; the locks decide

    def _unlock(self, port: int) -> None:
        assert self._fd is not None
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, port)

    def _lock(self, port: int) -> bool:
        assert self._fd is not None
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False  # another process on this machine holds it
            raise
        return True


def bindable(port: int) -> bool:
    """Whether nothing holds `port` on any address now (a listener, or a connection's local end)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


_RESERVATIONS = _Reservations()


def reserve_port() -> int:
    """A port no one else on this machine is using or will be handed, for this process's lifetime."""
    return _RESERVATIONS.reserve()


def reserve_port_pair(offset: int) -> int:
    """A reserved port whose `port + offset` is reserved too, for this process's lifetime."""
    return _RESERVATIONS.reserve_pair(offset)


def bind_reserved_port(server: grpc.Server | grpc.aio.Server, host: str = "127.0.0.1") -> int:
    """Bind an in-process gRPC server to a reserved port (another while one is taken); the port."""

    def bind() -> int:
        port = reserve_port()
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:  # grpcio raises where older versions returned 0
            bound = 0
        if not bound:
            raise PortTaken(f"{host}:{port} is taken")
        return bound

    return retry_on_port_taken(bind)


def says_port_taken(log_text: str) -> bool:
    """Whether a server's log says it could not bind (Redis: 'bind: Address already in use';
    Triton: "Socket '127.0.0.1:8001' already in use")."""
    return "already in use" in log_text


def retry_on_port_taken(start: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """`start()` again while it raises PortTaken; it reserves new ports each time it runs."""
    for attempt in range(attempts):
        try:
            return start()
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class Server(Protocol):
    """A server binary the launcher drives (Triton, Redis): its ports are fields, set when made."""

    process: subprocess.Popen | None

    def start(self) -> subprocess.Popen: ...

    def wait_ready(self, timeout_s: float) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


def start_server(make: Callable[[], S], timeout_s: float, attempts: int = ATTEMPTS) -> S:
    """The server `make` returns (on ports it reserves), started and ready; made and started again
    on new ports while its `wait_ready` raises PortTaken."""

    def attempt() -> S:
        server = make()
        server.start()
        try:
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    return retry_on_port_taken(attempt, attempts)
