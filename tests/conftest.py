"""Shared fixtures: tiny artifacts built once, the full stack on free loopback ports, helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import latest_version
from funnel.launcher.health import wait_serving
from funnel.launcher.processes import alive, free_port, spawn, stop_group, tail
from funnel.launcher.stack import REPO_ROOT, Stack, StackConfig
from funnel.v1 import recommender_pb2_grpc

POLICY = REPO_ROOT / "config" / "policy.yaml"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.build import build

    out = tmp_path_factory.mktemp("artifacts")
    # An evaluation bundle: the held-out truth stays out of its history, for the quality tests.
    build(out, "tiny", seed=7, epochs=3, for_evaluation=True)
    return out


@pytest.fixture(scope="session")
def catalog(artifacts: Path) -> Catalog:
    return Catalog.load(latest_version(artifacts / "bundles"))


@pytest.fixture(scope="session")
def stack(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Triton, two retrieval shards, ranking, re-ranking and the gateway, as real processes."""
    run_dir = tmp_path_factory.mktemp("run")
    stack = Stack(
        StackConfig(
            artifacts=artifacts,
            run_dir=run_dir,
            policy=POLICY,
            retrieval_shards=2,
            auto_ports=True,
            gateway_port=0,
            # Stages log every call here (off by default), so tests can follow a request id through them.
            extra_env={"FUNNEL_ACCESS_LOG": "true"},
        )
    )
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[recommender_pb2_grpc.RecommenderStub]:
    with grpc.insecure_channel(stack.address("gateway")) as channel:
        yield recommender_pb2_grpc.RecommenderStub(channel)


class ServiceProcess:
    """One service started by a test, stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(
        self,
        module: str,
        args: list[str],
        log: Path,
        wait: bool = True,
        env: dict[str, str] | None = None,
        port: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = log
        command = [sys.executable, "-m", module, "--port", str(self.port), *args]
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.process = spawn(command, log, env=environment, cwd=REPO_ROOT)
        if wait:
            try:
                wait_serving(self.address, 60, lambda: alive(self.process.pid), credentials)
            except (RuntimeError, TimeoutError) as exc:
                self.stop()
                raise RuntimeError(f"{module}: {exc}\n{tail(log)}") from None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_group(self.process.pid)
        self.process.wait(timeout=5)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    started: list[ServiceProcess] = []

    def start(
        module: str,
        args: list[str],
        wait: bool = True,
        env: dict[str, str] | None = None,
        port: int | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> ServiceProcess:
        log = tmp_path / f"{module}-{len(started)}.log"
        service = ServiceProcess(module, args, log, wait, env, port, credentials)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def start_gateway(start_service, artifacts: Path):
    """A gateway process pointed at the given stage addresses."""

    def start(
        retrieval: str, ranking: str, reranking: str, *extra: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> ServiceProcess:
        return start_service(
            "gateway",
            [
                "--retrieval-shards",
                retrieval,
                "--ranking-target",
                ranking,
                "--reranking-target",
                reranking,
                "--artifact-dir",
                str(artifacts),
                "--policy-path",
                str(POLICY),
                *extra,
            ],
            wait,
            env,
        )

    return start
