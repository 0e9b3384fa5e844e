"""The gateway under slow, failing and overloaded stages: ejection, hedging, quality factor,
shedding and the retry budget, each against real stages beside one fault-injecting double."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from funnel.v1 import recommender_pb2, recommender_pb2_grpc
from tests.fakes import Fault, faulty_ranking, fixed_retrieval
from tests.test_degradation import DEGRADED, OK, shards, stage


def ask(stub: recommender_pb2_grpc.RecommenderStub, user: int, timeout: float = 2.0):
    return stub.Recommend(recommender_pb2.RecommendRequest(user_id=f"u{user:07d}", num_results=10), timeout=timeout)


def test_a_replica_that_keeps_failing_is_ejected_for_a_while_then_tried_again(stack, start_gateway):
    failing = Fault(code=grpc.StatusCode.INTERNAL)
    with faulty_ranking(failing) as double:
        gateway = start_gateway(shards(stack), f"{stack.address('ranking-0')},{double}", stack.address("reranking-0"))
        timeline: list[tuple[float, int, bool]] = []  # (time, calls the failing replica had, ranking ok)
        lock = threading.Lock()
        done = threading.Event()
        started = time.monotonic()

        def client(first_user: int) -> None:
            # Two clients, so each replica sees the 10+ calls a second outlier detection looks at
            # even on a slow machine.
            with grpc.insecure_channel(gateway.address) as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                user = first_user
                while not done.is_set() and time.monotonic() - started < 16:
                    ok = stage(ask(stub, user % 50 + 1), "ranking").status == OK
                    user += 2
                    with lock:
                        timeline.append((time.monotonic() - started, failing.calls, ok))
                        quiet = first_quiet_run(timeline, seconds=2.0)
                        if quiet is not None and quiet[1] != float("inf"):
                            done.set()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(client, (1, 2)))
    assert any(calls for t, calls, _ in timeline if t < 1.0), "the failing replica was called at first"
    quiet = first_quiet_run(timeline, seconds=2.0)
    assert quiet is not None, "the failing replica was never taken out of rotation for 2 s"
    begin, end = quiet
    # `begin` is when its last call was seen; a call of the other client may finish just after it.
    during = [ok for t, _, ok in timeline if begin + 0.2 < t < end]
    assert len(during) >= 20 and all(during), "meanwhile every request was ranked by the healthy replica"
    assert end != float("inf"), "the ejected replica was tried again after its ejection time"


def first_quiet_run(timeline: list[tuple[float, int, bool]], seconds: float) -> tuple[float, float] | None:
    """The first stretch of at least `seconds` in which the replica got no call: from the request that
    saw its last call to the first one that saw a new call (+inf when none came)."""
    run_start = timeline[0][0]
    for n in range(1, len(timeline)):
        if timeline[n][1] != timeline[n - 1][1]:
            if timeline[n][0] - run_start >= seconds:
                return run_start, timeline[n][0]
            run_start = timeline[n][0]
    return (run_start, float("inf")) if timeline[-1][0] - run_start >= seconds else None


def test_a_slow_shard_replica_is_hedged_on_the_other_and_the_loser_cancelled(stack, catalog, start_gateway):
    """Every 5th call to one replica of shard 0 hangs for 0.5 s, far beyond the shard budget."""
    slow = Fault(delay_s=0.5, every=5)
    with fixed_retrieval([str(i) for i in catalog.item_ids[:60]], slow) as double:
        targets = f"{stack.address('retrieval-0-0')},{double};{stack.address('retrieval-1-0')}"
        ranking, reranking = stack.address("ranking-0"), stack.address("reranking-0")
        results = {}
        for name, flags in {"hedged": [], "not hedged": ["--hedge-quantile", "0"]}.items():
            # A 150 ms shard budget: room for a busy machine, still far below the 0.5 s hang.
            gateway = start_gateway(targets, ranking, reranking, "--retrieval-budget-ms", "150", *flags)
            with grpc.insecure_channel(gateway.address) as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                for user in range(1, 41):  # warm-up: the hedge delay comes from observed latency
                    ask(stub, user)
                cancelled_before = slow.cancelled
                measured = [stage(ask(stub, user), "retrieval") for user in range(41, 141)]
                time.sleep(0.6)  # let the double's hung calls notice the cancellation
                results[name] = (measured, slow.cancelled - cancelled_before)
    hedged, cancelled = results["hedged"]
    assert sum(r.attempts == 2 for r in hedged) >= 5, "slow calls were hedged"
    assert all(r.status == OK for r in hedged), [r.message for r in hedged if r.status != OK][:3]
    assert cancelled >= 5, "the losing call was cancelled, not left running"
    unhedged, _ = results["not hedged"]
    partial = [r for r in unhedged if r.status == DEGRADED and "cut off" in r.message]
    assert len(partial) >= 5, "without hedging the same slow calls cut the shard off"


def test_quality_factor_shrinks_candidates_under_latency_pressure_and_recovers(stack, start_gateway):
    # Ranking answers at 4/5 of its budget: pressure, with 60 ms to spare so a busy machine does not
    # turn it into a cut-off.
    slow = Fault(delay_s=0.24)
    with faulty_ranking(slow) as ranking:
        gateway = start_gateway(
            shards(stack),
            ranking,
            stack.address("reranking-0"),
            "--ranking-budget-ms",
            "300",
            "--default-deadline-ms",
            "1000",
        )
        with grpc.insecure_channel(gateway.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            first = ask(stub, 1)
            lowest = until(stub, lambda r: r.quality_factor <= 0.3, seconds=15)
            slow.delay_s = 0.0
            recovered = until(stub, lambda r: r.quality_factor == 1.0, seconds=30)
            again = ask(stub, 1)
    assert first.quality_factor == 1.0
    assert lowest is not None, "the factor never fell under pressure"
    assert recovered is not None, "the factor never recovered once the pressure was gone"
    asked_first, asked_low = stage(first, "ranking").items_in, stage(lowest, "ranking").items_in
    assert asked_low < 0.5 * asked_first, (asked_first, asked_low)
    assert stage(lowest, "ranking").status == OK and not lowest.degraded, "quality traded, nothing failed"
    assert again.quality_factor == 1.0 and stage(again, "ranking").items_in == asked_first, "same user, same counts"


def until(stub, condition, seconds: float):
    deadline = time.monotonic() + seconds
    user = 0
    while time.monotonic() < deadline:
        user += 1
        response = ask(stub, user % 50 + 1)
        if condition(response):
            return response
    return None


def test_beyond_its_concurrency_limit_the_gateway_refuses_at_once_and_keeps_answering_probes(stack, start_gateway):
    # An accepted call holds its slot for a full second, so "refused at once" (a third of that)
    # keeps its meaning with seconds of headroom on a busy 2-core machine: 0.3 s once flaked.
    slow = Fault(delay_s=1.0)
    with faulty_ranking(slow) as ranking:
        gateway = start_gateway(
            shards(stack),
            ranking,
            stack.address("reranking-0"),
            "--max-in-flight",
            "4",
            "--ranking-budget-ms",
            "2000",
            "--default-deadline-ms",
            "4000",
        )
        with grpc.insecure_channel(gateway.address) as channel, ThreadPoolExecutor(24) as pool:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            ask(stub, 1, timeout=4.0)  # connections warm

            def timed(user: int):
                started = time.perf_counter()
                try:
                    ask(stub, user, timeout=4.0)
                    return "ok", time.perf_counter() - started, ""
                except grpc.RpcError as exc:
                    return exc.code().name, time.perf_counter() - started, exc.details()

            burst = [pool.submit(timed, n % 50 + 1) for n in range(24)]
            time.sleep(0.1)
            probe = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            outcomes = [f.result() for f in burst]
    accepted = [t for code, t, _ in outcomes if code == "ok"]
    refused = [(t, d) for code, t, d in outcomes if code == "RESOURCE_EXHAUSTED"]
    assert len(accepted) + len(refused) == len(outcomes), {code for code, _, _ in outcomes}
    assert 4 <= len(accepted) <= 8 and len(refused) >= 16, (len(accepted), len(refused))
    assert all("overloaded" in d for _, d in refused)
    assert slow.most_in_flight <= 4, "never more than the limit reached the stage behind"
    assert max(t for t, _ in refused) < min(accepted) / 3, "refused at once, not after queueing"
    assert probe.status == health_pb2.HealthCheckResponse.SERVING, "probes are never shed"


def test_retries_stay_within_their_budget_when_every_ranking_call_fails(stack, start_gateway):
    failing = Fault(code=grpc.StatusCode.UNAVAILABLE)
    with faulty_ranking(failing) as ranking:
        gateway = start_gateway(shards(stack), ranking, stack.address("reranking-0"))
        with grpc.insecure_channel(gateway.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            started = time.monotonic()
            for user in range(300):
                assert stage(ask(stub, user % 50 + 1), "ranking").status == DEGRADED
            seconds = time.monotonic() - started
    first_calls = 300
    extra = failing.calls - first_calls
    # 10% of first calls, 5 a second whatever the traffic, and the 20-token reserve it starts with.
    allowed = 0.1 * first_calls + 5 * seconds + 20
    assert 0 < extra <= allowed, f"{extra} retries for {first_calls} calls in {seconds:.1f} s (allowed {allowed:.0f})"
    assert extra < 0.5 * first_calls, "retries did not double the load on a failing stage"
