"""Shared fixtures: tiny artifacts built once, the full stack on reserved loopback ports, helpers.

Tests that start real processes carry the `processes` marker (`make test-fast` runs the others):
every test using a fixture that starts one gets it here, and a module that starts its own sets
`pytestmark`. A test without the marker that starts a process anyway fails, so the fast part stays
what it claims to be.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy.testing  # noqa: F401  (its first import runs `lscpu`: done here, before any test's guard)
import pytest

from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import latest_version
from funnel.v1 import recommender_pb2_grpc
from launcher.service import ServiceProcess
from launcher.stack import REPO_ROOT, Stack, StackConfig

POLICY = REPO_ROOT / "config" / "policy.yaml"
# Fixtures that start real processes: a test using one (directly or through another) is marked.
PROCESS_FIXTURES = {"stack", "gateway", "start_service", "start_gateway", "own_triton", "mtls_triton", "rendered"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def _no_process_unless_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("processes") is not None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it (or its module) `processes`")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


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
        metrics: bool = False,
    ) -> ServiceProcess:
        log = tmp_path / f"{module}-{len(started)}.log"
        service = ServiceProcess(module, args, log, wait, env, port, credentials, metrics)
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
            "services.gateway",
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
