"""Ports are never raced for: reserved outside the ephemeral range, locked across processes, checked
free, and a process that finds one taken anyway is started again on another."""

from __future__ import annotations

import multiprocessing
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from launcher import ports
from launcher.churn import churn
from launcher.health import health_status
from launcher.ports import PORT_IN_USE_EXIT, PortTaken, ephemeral_range, reserve_port, start_server, usable_ports
from launcher.redis import RedisServer
from launcher.service import ServiceProcess
from launcher.stack import REPO_ROOT, Stack, StackConfig


@contextmanager
def held(port: int | None = None) -> Iterator[int]:
    """A listening socket outside the reservations, on `port` or one of the kernel's choosing."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port or 0))
        sock.listen()
        yield sock.getsockname()[1]


def taken_first(monkeypatch: pytest.MonkeyPatch, taken: int) -> None:
    """The service launcher's next reservation hands out `taken` once, as if something outside the
    scheme had bound the port between its check and its use; the ones after are reserved as usual."""
    handed = iter([taken])
    monkeypatch.setattr("launcher.service.reserve_port", lambda: next(handed, None) or reserve_port())


def test_reserved_ports_lie_outside_the_ephemeral_range_and_are_free():
    ephemeral = ephemeral_range()
    reserved = [reserve_port() for _ in range(50)]
    assert len(set(reserved)) == 50
    assert not [port for port in reserved if port in ephemeral]
    for port in reserved:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_someone_holds_is_skipped(monkeypatch):
    free = reserve_port()  # free, and no one else will be handed it
    with held() as busy:
        monkeypatch.setattr(ports, "_RESERVATIONS", ports._Reservations())
        monkeypatch.setattr(ports, "usable_ports", lambda ephemeral: [busy, free])
        assert reserve_port() == free


def test_too_small_a_range_below_the_ephemeral_one_moves_above_it():
    assert min(usable_ports(range(1024, 40000))) >= 40000
    assert set(usable_ports(range(40000, 50000))) == set(ports.PREFERRED)


def _reserve_in_child(count: int, queue) -> None:
    queue.put([reserve_port() for _ in range(count)])


@pytest.mark.processes
def test_two_processes_reserving_at_once_never_get_the_same_port():
    mine = [reserve_port() for _ in range(200)]
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_reserve_in_child, args=(200, queue))
    child.start()
    theirs = queue.get(timeout=60)
    child.join(timeout=30)
    assert not set(mine) & set(theirs)


def test_the_churn_helper_opens_and_closes_thousands_of_connections():
    assert churn(1.0, rate=0) > 1000


@pytest.mark.processes
def test_a_service_exits_with_the_port_in_use_status_when_its_metrics_port_is_taken(artifacts, tmp_path):
    with held() as busy:
        result = subprocess.run(
            [sys.executable, "-m", "services.reranking", "--port", str(reserve_port()), "--metrics-port", str(busy),
             "--artifact-dir", str(artifacts)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == PORT_IN_USE_EXIT, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{busy}" in result.stderr


@pytest.mark.processes
def test_a_service_whose_port_is_taken_is_started_again_on_another(artifacts, tmp_path, monkeypatch):
    with held() as busy:
        taken_first(monkeypatch, busy)
        service = ServiceProcess("services.reranking", ["--artifact-dir", str(artifacts)], tmp_path / "log")
        try:
            assert service.port != busy
            assert f"cannot listen on 127.0.0.1:{busy}" in (tmp_path / "log").read_text()
        finally:
            service.stop()


@pytest.mark.processes
def test_a_server_binary_whose_port_is_taken_is_made_again_on_another(tmp_path):
    with held() as busy:
        attempts = []

        def make() -> RedisServer:
            attempts.append(busy if not attempts else reserve_port())
            return RedisServer(tmp_path / f"redis-{len(attempts)}", attempts[-1], tmp_path / "redis.log")

        redis = start_server(make, timeout_s=30)
        try:
            assert attempts[0] == busy and redis.port == attempts[1] and redis.answers()
        finally:
            redis.stop()


@pytest.mark.processes
def test_a_port_taken_on_a_fixed_port_is_an_error_not_a_move(tmp_path):
    with held() as busy, pytest.raises(PortTaken):
        start_server(lambda: RedisServer(tmp_path / "redis", busy, tmp_path / "redis.log"), 30, attempts=1)


def test_a_stack_process_whose_port_is_taken_is_started_again_on_another_in_its_place(stack, monkeypatch):
    with held() as busy:
        handed = iter([busy])
        real = stack._port
        monkeypatch.setattr(stack, "_port", lambda: next(handed, None) or real())
        replica = stack.launch_like("reranking-0", "reranking-moved")
        try:
            assert replica.port != busy and stack.get("reranking-moved") is replica
            assert f"cannot listen on 127.0.0.1:{busy}" in Path(replica.log).read_text()
            stack.wait_all_serving()
            assert health_status(stack.address("reranking-moved")) == "SERVING"
        finally:
            stack.stop_one("reranking-moved")


@pytest.mark.processes
def test_a_stack_whose_triton_port_is_taken_moves_triton_and_points_ranking_at_its_new_address(artifacts, tmp_path):
    stack = Stack(
        StackConfig(artifacts, run_dir=tmp_path, auto_ports=True, gateway_port=0, live_state=False,
                    startup_timeout_s=60)
    )  # fmt: skip
    with held() as busy:
        real = stack._port
        handed = iter([real(), busy])  # Triton's HTTP port, then its gRPC port: taken
        stack._port = lambda: next(handed, None) or real()  # type: ignore[method-assign]
        try:
            stack.start()
            assert stack.triton is not None and stack.get("triton").port == stack.triton.grpc_port != busy
            assert "already in use" in (tmp_path / "logs" / "triton.log").read_text()
            (ranking,) = [p for p in stack.processes if p.name.startswith("ranking")]
            assert stack._launches[ranking.name][1][1] == stack.triton.grpc_url
            assert health_status(stack.address(ranking.name)) == "SERVING"  # it reads the moved Triton's model
        finally:
            stack.stop()
