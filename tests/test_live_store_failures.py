"""The online store failing under a running stack: acknowledged events survive kill -9, answers
degrade (never fail) while the store is down or hung, writes are UNAVAILABLE (never a lost OK), and
both recover by themselves."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from funnel.live.schema import user_key
from funnel.v1 import common_pb2, events_pb2
from funnel.v1.recommender_pb2 import RecommendRequest as Request
from launcher.processes import alive
from tests.live import event, events_stub, store, stream_event_ids, wait_until
from tests.test_live_state import stage


def kill_store(stack) -> None:
    pid = stack.get("redis").pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid))


def test_acknowledged_events_survive_kill_9_of_the_store(stack):
    stub = events_stub(stack)
    acknowledged: list[events_pb2.Event] = []
    for batch in range(50):
        events = [event(f"live-durable-{n % 10}", f"i{batch:04d}{n:02d}") for n in range(20)]
        reply = stub.RecordEvents(events_pb2.RecordEventsRequest(events=events), timeout=5)
        assert reply.recorded == 20
        acknowledged += events
    kill_store(stack)  # right after the last acknowledgement
    stack.restart_store()

    client = store(stack)
    assert {e.event_id for e in acknowledged} <= stream_event_ids(client), "every acknowledged event is in the log"
    for n in range(10):
        assert client.zcard(user_key(f"live-durable-{n}", "recent")) == 100
    # Writes recover by themselves: the next call after the restart is acknowledged.
    assert stub.RecordEvents(events_pb2.RecordEventsRequest(events=[event("live-durable-0", "x")]), timeout=5).recorded


def test_store_down_degrades_answers_and_refuses_writes_until_it_returns(stack, gateway):
    stub = events_stub(stack)
    kill_store(stack)
    try:
        reply = gateway.Recommend(Request(user_id="u0000007", num_results=10), timeout=5)
        assert len(reply.items) == 10, "answered from the bundle's stored history"
        assert reply.degraded
        live = stage(reply, "live_state")
        assert live.status == common_pb2.STAGE_STATUS_DEGRADED
        assert live.cause == common_pb2.DEGRADATION_CAUSE_UNAVAILABLE
        assert "stored history" in live.message
        assert all(s.status == common_pb2.STAGE_STATUS_OK for s in reply.stages if s.stage != "live_state")
        with pytest.raises(grpc.RpcError) as error:
            stub.RecordEvents(events_pb2.RecordEventsRequest(events=[event("live-down", "i0000100")]), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry with the same event ids" in error.value.details()
    finally:
        stack.restart_store()
    reply = gateway.Recommend(Request(user_id="u0000007", num_results=10), timeout=5)
    assert not reply.degraded, [s.message for s in reply.stages]
    assert stub.RecordEvents(
        events_pb2.RecordEventsRequest(events=[event("live-down", "i0000100")]), timeout=5
    ).recorded


def test_a_hung_store_costs_an_answer_its_budget_and_no_more(stack, gateway):
    pid = stack.get("redis").pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = gateway.Recommend(Request(user_id="u0000008", num_results=10), timeout=5)
        elapsed = time.monotonic() - started
        live = stage(reply, "live_state")
        assert live.cause == common_pb2.DEGRADATION_CAUSE_DEADLINE and reply.degraded
        assert len(reply.items) == 10
        assert live.latency_ms < 200, "cut off at the step's budget (25 ms by default), with scheduling headroom"
        assert elapsed < 2.0
        with pytest.raises(grpc.RpcError) as error:
            events_stub(stack).RecordEvents(
                events_pb2.RecordEventsRequest(events=[event("live-hung", "i1")]), timeout=10
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: not gateway.Recommend(Request(user_id="u0000008", num_results=10), timeout=5).degraded)


def test_a_burst_of_events_while_serving_fails_nothing(stack, gateway):
    stub, client = events_stub(stack), store(stack)
    errors: list[str] = []
    answers: list[bool] = []
    recorded: list[str] = []
    stop = time.monotonic() + 4.0

    def serve(worker: int) -> None:
        n = 0
        while time.monotonic() < stop:
            try:
                reply = gateway.Recommend(Request(user_id=f"u{worker * 50 + n % 50:07d}", num_results=10), timeout=5)
                answers.append(reply.degraded)
            except grpc.RpcError as exc:
                errors.append(f"Recommend: {exc.code()} {exc.details()}")
            n += 1

    def record(worker: int) -> None:
        n = 0
        while time.monotonic() < stop:
            events = [event(f"u{(worker * 20 + k) % 300:07d}", f"i{(n * 20 + k) % 2000:07d}") for k in range(20)]
            try:
                stub.RecordEvents(events_pb2.RecordEventsRequest(events=events), timeout=5)
                recorded.extend(e.event_id for e in events)
            except grpc.RpcError as exc:
                errors.append(f"RecordEvents: {exc.code()} {exc.details()}")
            n += 1

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=record, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:5]
    assert len(recorded) >= 400 and len(answers) >= 20
    assert set(recorded) <= stream_event_ids(client)
    # On two shared cores a stage can miss its budget under this load; the store's part never fails.
    assert sum(answers) <= 0.05 * len(answers)
