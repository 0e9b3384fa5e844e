"""Readiness that reflects real state, fail-fast configuration, graceful shutdown, make up/down."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from funnel.artifacts.store import latest_version
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from launcher.health import health_status
from launcher.ports import reserve_port
from launcher.processes import alive
from launcher.stack import REPO_ROOT
from tests.fakes import Fault, closed_address, faulty_ranking

pytestmark = pytest.mark.processes  # every test here starts real processes


def statuses_for(address: str, seconds: float) -> list[str]:
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(health_status(address))
        time.sleep(0.1)
    return seen


def wait_for_status(address: str, wanted: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if health_status(address) == wanted:
            return True
        time.sleep(0.05)
    return False


def test_retrieval_is_not_serving_until_an_index_is_loaded(artifacts, start_service, tmp_path):
    empty_root = tmp_path / "root"
    (empty_root / "bundles").mkdir(parents=True)
    retrieval = start_service(
        "services.retrieval", ["--artifact-dir", str(empty_root), "--artifact-poll-seconds", "0.2"], wait=False
    )
    assert wait_for_status(retrieval.address, "NOT_SERVING", 30), "the server answers health while it waits"
    assert set(statuses_for(retrieval.address, 1.0)) == {"NOT_SERVING"}
    bundle = latest_version(artifacts / "bundles")
    shutil.copytree(bundle, empty_root / "bundles" / bundle.name)
    assert wait_for_status(retrieval.address, "SERVING", 30)


def test_ranking_is_not_serving_while_triton_is_unreachable(artifacts, start_service):
    ranking = start_service(
        "services.ranking",
        ["--artifact-dir", str(artifacts), "--triton-url", closed_address(), "--readiness-poll-seconds", "0.2"],
        wait=False,
    )
    assert wait_for_status(ranking.address, "NOT_SERVING", 30)
    assert set(statuses_for(ranking.address, 1.5)) == {"NOT_SERVING"}


def test_ranking_serves_once_triton_model_is_ready(stack):
    assert health_status(stack.address("ranking-0")) == "SERVING"
    assert stack.triton is not None and stack.triton.models_ready()


def run_retrieval(*args: str) -> subprocess.CompletedProcess:
    """Start a retrieval process that is expected to refuse its configuration and exit."""
    return subprocess.run(
        [sys.executable, "-m", "services.retrieval", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )


def test_invalid_configuration_exits_before_serving_with_every_problem_named(tmp_path):
    result = run_retrieval("--shard-index", "2", "--shard-count", "2", "--port", "70000")
    assert result.returncode == 2
    assert "artifact_dir: required" in result.stderr


def test_cross_field_configuration_errors_are_reported(tmp_path):
    result = run_retrieval(
        "--shard-index", "2", "--shard-count", "2", "--port", "70000", "--artifact-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "port=70000 must be a port number" in result.stderr
    assert "shard_index=2 must be < shard_count=2" in result.stderr


def test_a_malformed_policy_stops_reranking_with_a_clear_error(artifacts, start_service, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: no_such_rule\n")
    service = start_service(
        "services.reranking", ["--artifact-dir", str(artifacts), "--policy-path", str(policy)], wait=False
    )
    assert service.process.wait(timeout=60) == 1
    assert "unknown rule 'no_such_rule'" in service.log.read_text()


def test_sigterm_lets_every_in_flight_request_finish(stack, start_gateway):
    slow = Fault(delay_s=0.8)  # slow but inside the budget: requests stay in flight for a while
    with faulty_ranking(slow) as ranking:
        gateway = start_gateway(
            f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}",
            ranking,
            stack.address("reranking-0"),
            "--ranking-budget-ms",
            "5000",
            "--retrieval-budget-ms",
            "2000",
            "--reranking-budget-ms",
            "2000",
            "--default-deadline-ms",
            "8000",
            "--drain-seconds",
            "1.0",
        )
        results: list[object] = []

        def call(n: int) -> None:
            with grpc.insecure_channel(gateway.address) as channel:
                try:
                    results.append(
                        recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                            recommender_pb2.RecommendRequest(user_id=f"u{n:07d}", num_results=5), timeout=20
                        )
                    )
                except grpc.RpcError as exc:
                    results.append(exc)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while slow.calls < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slow.calls == 12, "every request reached ranking and is in flight"
        os.kill(gateway.process.pid, signal.SIGTERM)
        assert wait_for_status(gateway.address, "NOT_SERVING", 0.8), "health flips at once, before the server stops"
        for thread in threads:
            thread.join(timeout=30)
        assert gateway.process.wait(timeout=30) == 0

    failures = [r for r in results if isinstance(r, grpc.RpcError)]
    assert not failures, [f"{f.code()}: {f.details()}" for f in failures]
    assert len(results) == 12
    assert all(len(r.items) == 5 for r in results)
    assert not [r.stages for r in results if r.degraded], "a burst within generous budgets is not degraded"
    assert all(r.stages[1].status == common_pb2.STAGE_STATUS_OK for r in results)


def test_make_up_and_down_leave_no_process_behind(artifacts, tmp_path):
    run_dir, port = tmp_path / "run", reserve_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    launcher = [sys.executable, "-m", "launcher", "--run-dir", str(run_dir)]
    up = subprocess.run(
        [
            *launcher,
            "up",
            "--artifacts",
            str(artifacts),
            "--gateway-port",
            str(port),
            "--auto-ports",
            "--ranking-replicas",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((run_dir / "stack.json").read_text())
    try:
        _check_running_stack(launcher, env, state, run_dir, port)
    finally:
        down = subprocess.run([*launcher, "down"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert down.returncode == 0 and "stopped 8 processes" in down.stdout
    assert not (run_dir / "stack.json").exists()
    assert not [p for p in state if alive(p["pid"])]
    assert not _processes_using(Path(artifacts)), "no tritonserver or python backend stub left behind"


def _check_running_stack(launcher: list[str], env: dict[str, str], state: list[dict], run_dir: Path, port: int) -> None:
    assert [p["name"] for p in state] == [
        "triton",
        "redis",
        "events",
        "retrieval-0-0",
        "ranking-0",
        "ranking-1",
        "reranking-0",
        "gateway",
    ]
    token = (run_dir / "credentials" / "demo.token").read_text().strip()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.RecommendRequest(user_id="u0000001", num_results=3)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(request, timeout=10)  # make up's public services know their callers
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for n in range(12):
            response = stub.Recommend(
                recommender_pb2.RecommendRequest(user_id=f"u{n:07d}", num_results=3), timeout=10,
                metadata=(("authorization", f"Bearer {token}"),),
            )  # fmt: skip
            assert len(response.items) == 3 and not response.degraded, response.stages
    ports = {p["name"]: p["metrics_port"] for p in state}
    served = re.compile(r'funnel_rpc_requests_total\{code="OK",method="/funnel.v2.Ranking/Rank"\} (\S+)')
    for replica in ("ranking-0", "ranking-1"):
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[replica]}/metrics", timeout=5) as page:
            found = served.search(page.read().decode())
        assert found and float(found.group(1)) > 0, f"the gateway balances across replicas; {replica} served none"
    status = subprocess.run([*launcher, "status"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60)
    assert status.stdout.count("SERVING") == 6 and "PONG" in status.stdout, status.stdout


def _processes_using(artifacts: Path) -> list[str]:
    """Command lines of live processes that mention the artifact directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(artifacts) in cmdline and "pytest" not in cmdline:
                found.append(cmdline)
    return found
