"""Calls to the stage services, each cut off at its budget and reported as a StageReport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from funnel.runtime.channels import open_channel
from funnel.runtime.interceptors import SERVER_TIME_KEY, outgoing_metadata
from funnel.runtime.metrics import STAGE_LATENCY
from funnel.runtime.tls import Tls
from funnel.runtime.tracing import tracer
from funnel.v1 import ranking_pb2_grpc, reranking_pb2_grpc, retrieval_pb2_grpc
from gateway.resilience import RetryBudget

T = TypeVar("T")


@dataclass
class StageCall(Generic[T]):
    """The outcome of one downstream call: a response, or why there is none."""

    response: T | None
    latency_ms: float
    error: str = ""
    code: grpc.StatusCode | None = None
    server_ms: float = 0.0  # the stage server's own time, from its trailer
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def cause(self) -> str:
        """The metrics label of a failure: cut off at its budget, or an error."""
        return "late" if self.code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"


@dataclass
class Attempts:
    """How many calls one stage call may make: a retry of an unavailable replica, a hedge of a
    slow one (`hedge_after_s`), each only while the retry budget allows."""

    budget: RetryBudget | None = None
    hedge_after_s: float | None = None


# The replica never took the call (dead, draining, shedding or refusing the connection): another
# replica may well answer, and every stage call is a read, so a second call is safe.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


async def call_stage(
    stage: str,
    invoke: Callable[[float, tuple], grpc.aio.UnaryUnaryCall],
    timeout_s: float,
    attempts: Attempts | None = None,
) -> StageCall[T]:
    """Run one stage call within `timeout_s`; never raises for a stage failure, only reports it."""
    with tracer.start_as_current_span(stage, kind=SpanKind.CLIENT) as span:
        started = time.perf_counter()
        if timeout_s <= 0.0005:
            result = StageCall(None, 0.0, "no budget left", grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            plan = attempts or Attempts()
            if plan.budget is not None:
                plan.budget.record_call()
            result = await _call_with_attempts(stage, invoke, timeout_s, plan)
        result.latency_ms = _ms(started)
        outcome = "ok" if result.ok else result.cause
        span.set_attribute("funnel.stage", stage)
        span.set_attribute("funnel.outcome", outcome)
        span.set_attribute("funnel.timeout_ms", round(timeout_s * 1000, 1))
        span.set_attribute("funnel.attempts", result.attempts)
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error))
    STAGE_LATENCY.labels(stage, outcome).observe(result.latency_ms / 1000)
    return result


async def _call_with_attempts(
    stage: str, invoke: Callable[[float, tuple], grpc.aio.UnaryUnaryCall], timeout_s: float, plan: Attempts
) -> StageCall:
    """First call; then at most one more: a hedge once `hedge_after_s` passes without an answer,
    or a retry when the first fails retryably. The first answer wins; the other call is cancelled."""
    deadline = time.perf_counter() + timeout_s
    metadata = outgoing_metadata()
    running = {asyncio.ensure_future(_one(invoke(timeout_s, metadata), timeout_s))}
    made = 1
    hedge_at = deadline if plan.hedge_after_s is None else time.perf_counter() + plan.hedge_after_s
    last: StageCall | None = None
    try:
        while running:
            wait_s = max(0.0, hedge_at - time.perf_counter()) if made == 1 else None
            done, running = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            remaining = deadline - time.perf_counter()
            if not done:  # the hedge delay passed with the first call still out
                hedge_at = deadline
                if remaining > 0.001 and plan.budget is not None and plan.budget.try_spend(stage, "hedge"):
                    running.add(asyncio.ensure_future(_one(invoke(remaining, metadata), remaining)))
                    made = 2
                continue
            last = done.pop().result()
            if last.ok:
                break
            retry = last.code in RETRYABLE and made == 1 and not running and remaining > 0.001
            if retry and plan.budget is not None and plan.budget.try_spend(stage, "retry"):
                running.add(asyncio.ensure_future(_one(invoke(remaining, metadata), remaining)))
                made = 2
    finally:
        for task in running:
            task.cancel()
    assert last is not None  # the loop ends only after a call finished
    last.attempts = made
    return last


async def _one(call: grpc.aio.UnaryUnaryCall, timeout_s: float) -> StageCall:
    started = time.perf_counter()
    try:
        response = await call
        trailers = dict(await call.trailing_metadata() or ())
        return StageCall(response, _ms(started), server_ms=float(trailers.get(SERVER_TIME_KEY, 0.0)))
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        late = code == grpc.StatusCode.DEADLINE_EXCEEDED
        message = f"cut off after {timeout_s * 1000:.0f} ms budget" if late else f"{code.name}: {exc.details()}"
        return StageCall(None, _ms(started), message, code)
    except asyncio.CancelledError:
        call.cancel()  # the other call won: free the replica's work and the stream
        raise


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class StageClients:
    """One balanced channel per retrieval shard, one each for ranking and re-ranking."""

    def __init__(
        self, shard_targets: list[str], ranking_target: str, reranking_target: str, max_message_bytes: int, tls: Tls
    ) -> None:
        self._channels = [open_channel(t, max_message_bytes, tls) for t in shard_targets]
        self.retrieval = [retrieval_pb2_grpc.RetrievalStub(c) for c in self._channels]
        ranking_channel = open_channel(ranking_target, max_message_bytes, tls)
        reranking_channel = open_channel(reranking_target, max_message_bytes, tls)
        self._channels += [ranking_channel, reranking_channel]
        self.ranking = ranking_pb2_grpc.RankingStub(ranking_channel)
        self.reranking = reranking_pb2_grpc.RerankingStub(reranking_channel)

    async def connect(self, timeout_s: float) -> list[str]:
        """Open every connection before the first request needs it; returns the unreachable ones."""

        async def ready(channel: grpc.aio.Channel) -> bool:
            try:
                await asyncio.wait_for(channel.channel_ready(), timeout_s)
                return True
            except TimeoutError:
                return False

        results = await asyncio.gather(*(ready(channel) for channel in self._channels))
        return [str(n) for n, ok in enumerate(results) if not ok]

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self._channels))
