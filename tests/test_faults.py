"""Faults under steady load, on a stack where every stage has two replicas and there are two gateways.

Load is open loop at a modest rate (these machines are small and shared); what is asserted is what
the client saw: no failed call, and no answer degraded by a failing call beyond what the fault
itself had in flight. Answers degraded because a stage was cut off at its budget (CPU contention
while a process restarts) are counted, not asserted: they are the latency defence working.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from funnel.v1 import common_pb2
from launcher.health import wait_serving
from launcher.processes import alive
from launcher.stack import Stack, StackConfig
from tests.conftest import POLICY
from tests.load import SteadyLoad, failed, summary

pytestmark = pytest.mark.processes  # every test here starts real processes

USERS = [f"u{n:07d}" for n in range(1, 60)]
STAGE_CALLS = re.compile(r'^funnel_rpc_requests_total\{code="OK",method="/funnel\.v\d+\.(\w+)/(\w+)"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def replicated(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        StackConfig(
            artifacts=artifacts,
            run_dir=tmp_path_factory.mktemp("replicated"),
            policy=POLICY,
            retrieval_shards=2,
            retrieval_replicas=2,
            ranking_replicas=2,
            reranking_replicas=2,
            auto_ports=True,
            gateway_port=0,
            # Replicas of the stages under faults; the online store's faults have their own tests
            # (tests/test_live_store_failures.py), and its one Redis has no replica to fail over to.
            live_state=False,
        )
    )
    stack.start()
    try:
        stack.launch_like("gateway", "gateway-b")
        stack.wait_all_serving()
        yield stack
    finally:
        stack.stop()


def gateways(stack: Stack) -> str:
    return "ipv4:" + ",".join(stack.address(name) for name in ("gateway", "gateway-b"))


def served_calls(metrics_port: int) -> float:
    """Calls of the stage's own service answered OK by one process, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(float(count) for service, _, count in STAGE_CALLS.findall(text) if service != "Health")


def kill(stack: Stack, name: str) -> None:
    pid = stack.get(name).pid
    os.killpg(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.02)


def restart_and_wait(stack: Stack, name: str) -> float:
    """Start `name` again on its ports; wait until it serves and has answered a call through the gateway."""
    info = stack.relaunch(name)
    wait_serving(f"127.0.0.1:{info.port}", 60, lambda: alive(info.pid))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        calls = served_calls(info.metrics_port)
        if calls > 0:
            return calls
        time.sleep(0.2)
    return 0.0


@pytest.mark.parametrize("victim", ["retrieval-1-0", "ranking-0", "reranking-1"])
def test_sigkill_of_a_replica_under_load_costs_at_most_its_in_flight_calls_and_it_is_used_again(replicated, victim):
    with SteadyLoad(gateways(replicated), USERS) as load:
        time.sleep(1.5)
        killed_at = time.monotonic()
        in_flight = load.in_flight_at(killed_at)
        kill(replicated, victim)
        time.sleep(2.0)
        served_after_restart = restart_and_wait(replicated, victim)
        time.sleep(0.5)
    outcomes = load.snapshot()
    print(f"kill {victim}: {in_flight} in flight; {summary(outcomes)}")
    assert len(outcomes) > 40, summary(outcomes)
    assert not failed(outcomes), summary(outcomes)
    hit = [o for o in outcomes if o.stage_errors]
    assert len(hit) <= in_flight, f"{len(hit)} answers degraded by the kill, {in_flight} were in flight"
    late = [o.stage_errors for o in hit if o.started > killed_at + 0.5]
    assert not late, f"the gateway kept calling the dead replica: {late[:3]}"
    assert served_after_restart > 0, f"{victim} got no calls after its restart"


def test_rolling_restart_of_every_process_under_load_fails_no_request(replicated):
    order = [p.name for p in replicated.processes if p.name != "triton"]
    with SteadyLoad(gateways(replicated), USERS) as load:
        time.sleep(1.0)
        for name in order:
            info = replicated.get(name)
            os.killpg(info.pid, signal.SIGTERM)  # what the kubelet sends; the process drains itself
            while alive(info.pid):
                time.sleep(0.05)
            # As a Deployment with minReadySeconds: the next pod goes only once this one is taking
            # traffic again and every client had a reconnect backoff (at most 1 s) to find it.
            assert restart_and_wait(replicated, name) > 0, f"{name} got no calls after its restart"
            time.sleep(1.0)
    outcomes = load.snapshot()
    print(f"rolling restart of {len(order)} processes: {summary(outcomes)}")
    assert len(outcomes) > 100, summary(outcomes)
    assert not failed(outcomes), summary(outcomes)
    assert not [o.stage_errors for o in outcomes if o.stage_errors], summary(outcomes)


def test_triton_restart_degrades_to_retrieval_order_fast_and_recovers_by_itself(replicated):
    triton = replicated.triton
    assert triton is not None and triton.process is not None
    with SteadyLoad(gateways(replicated), USERS) as load:
        time.sleep(1.0)
        os.killpg(triton.process.pid, signal.SIGKILL)
        triton.process.wait()
        killed_at = time.monotonic()
        time.sleep(2.0)
        restarting_at = time.monotonic()  # calls started before this cannot have reached a Triton
        replicated.get("triton").pid = triton.start().pid  # so the stack stops the new one
        triton.wait_ready(120)
        back_at = time.monotonic()
        deadline = back_at + 20
        recovered_at = None
        while time.monotonic() < deadline and recovered_at is None:
            time.sleep(0.2)
            recovered = [o for o in load.snapshot() if o.started > back_at and ranking_ok(o)]
            recovered_at = recovered[0].started if recovered else None
        time.sleep(0.5)
    outcomes = load.snapshot()
    assert not failed(outcomes), summary(outcomes)
    down = [o for o in outcomes if killed_at + 1.0 < o.started and o.finished < restarting_at]
    assert down and all(not ranking_ok(o) for o in down)
    reports = [next(s for s in o.response.stages if s.stage == "ranking") for o in down]
    assert all("retrieval order" in r.message for r in reports), reports[0].message
    # Fast: refused at once (no ready replica), nowhere near the 80 ms ranking budget.
    fast = sorted(r.latency_ms for r in reports)[len(reports) // 2]
    assert fast < 20, f"median ranking time while Triton was down: {fast:.1f} ms"
    assert all(len(o.response.items) == 10 for o in down)
    assert recovered_at is not None, "ranking did not come back after Triton restarted"


def ranking_ok(outcome) -> bool:
    return outcome.response is not None and not any(
        s.stage == "ranking" and s.status != common_pb2.STAGE_STATUS_OK for s in outcome.response.stages
    )
