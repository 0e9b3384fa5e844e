"""One downstream target (a retrieval shard, ranking or re-ranking) and the policy of calling it.

A `StageClient` owns everything about calling its target: the transport (a gRPC method, or an
in-memory stage in tests), its own retry budget, the window of its recent latencies and the hedge
delay they give. `call` never raises for a stage failure: it returns a `StageCall` that says what
happened, for the step that made it to accept or fall back on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode

from funnel.runtime.calls import SERVER_TIME_KEY, outgoing_metadata
from funnel.runtime.metrics import STAGE_LATENCY
from funnel.runtime.tracing import tracer, tracing_on
from funnel.v1 import common_pb2
from services.gateway.resilience import LatencyWindow, RetryBudget

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

# The replica never took the call (dead, draining, shedding or refusing the connection): another
# replica may well answer, and every stage call is a read, so a second call is safe.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

CAUSE_OF_CODE = {
    grpc.StatusCode.DEADLINE_EXCEEDED: common_pb2.DEGRADATION_CAUSE_DEADLINE,
    grpc.StatusCode.UNAVAILABLE: common_pb2.DEGRADATION_CAUSE_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: common_pb2.DEGRADATION_CAUSE_OVERLOADED,
}


class StageError(Exception):
    """A call that ended without an answer, with the status it ended on."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Transport(Protocol):
    """Sends one request with a timeout and metadata; returns (response, the server's own ms) or
    raises StageError."""

    def __call__(self, request: Any, timeout_s: float, metadata: Metadata) -> Awaitable[tuple[Any, float]]: ...


class GrpcTransport:
    """A unary method of a stage's stub, on a channel balanced over its replicas."""

    def __init__(self, method: grpc.aio.UnaryUnaryMultiCallable) -> None:
        self.method = method

    async def __call__(self, request: Any, timeout_s: float, metadata: Metadata) -> tuple[Any, float]:
        call = self.method(request, timeout=timeout_s, metadata=metadata)
        try:
            response = await call
            trailers = await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            raise StageError(exc.code(), exc.details() or "") from None
        except asyncio.CancelledError:
            call.cancel()  # the other call won, or the request was cancelled: free the replica's work
            raise
        server_ms = next((float(value) for key, value in trailers or () if key == SERVER_TIME_KEY), 0.0)
        return response, server_ms


@dataclass
class StageCall(Generic[T]):
    """The outcome of one stage call: a response, or why there is none."""

    response: T | None
    latency_ms: float = 0.0
    error: str = ""
    code: grpc.StatusCode | None = None
    server_ms: float = 0.0  # the stage server's own time, from its trailer
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def cause(self) -> int:
        """The DegradationCause of a failed call."""
        return CAUSE_OF_CODE.get(self.code, common_pb2.DEGRADATION_CAUSE_ERROR) if self.code else 0


def _outcome(result: StageCall) -> str:
    if result.ok:
        return "ok"
    return "late" if result.code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"


class StageClient:
    """Calls one target: at most one extra call (a retry of an unavailable replica, or a hedge of a
    slow call when `hedge_quantile` is set), each only while the retry budget allows."""

    def __init__(
        self,
        stage: str,
        transport: Transport,
        retry_budget: RetryBudget,
        hedge_quantile: float = 0.0,
        min_hedge_delay_s: float = 0.0,
    ) -> None:
        self.stage = stage
        self.transport = transport
        self.retry_budget = retry_budget
        self.latency = LatencyWindow()
        self.hedge_quantile = hedge_quantile
        self.min_hedge_delay_s = min_hedge_delay_s
        self._observe = {outcome: STAGE_LATENCY.labels(stage, outcome).observe for outcome in ("ok", "late", "error")}

    def hedge_delay(self) -> float | None:
        """How long a call may be out before it is hedged: the recent latency quantile, not below the
        minimum; None until enough calls were seen, or when hedging is off."""
        if self.hedge_quantile <= 0:
            return None
        observed = self.latency.quantile(self.hedge_quantile)
        return None if observed is None else max(observed, self.min_hedge_delay_s)

    async def call(self, request: Any, timeout_s: float) -> StageCall:
        if not tracing_on():  # the span machinery costs a few microseconds a call even as a no-op
            return await self._timed_call(request, timeout_s)
        with tracer.start_as_current_span(self.stage, kind=SpanKind.CLIENT) as span:
            result = await self._timed_call(request, timeout_s)
            span.set_attribute("funnel.stage", self.stage)
            span.set_attribute("funnel.outcome", _outcome(result))
            span.set_attribute("funnel.timeout_ms", round(timeout_s * 1000, 1))
            span.set_attribute("funnel.attempts", result.attempts)
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error))
        return result

    async def _timed_call(self, request: Any, timeout_s: float) -> StageCall:
        started = time.perf_counter()
        if timeout_s <= 0.0005:
            result: StageCall = StageCall(None, 0.0, "no budget left", grpc.StatusCode.DEADLINE_EXCEEDED)
        else:
            self.retry_budget.record_call()
            hedge_after = self.hedge_delay()
            if hedge_after is None:
                result = await self._call_then_retry(request, timeout_s)
            else:
                result = await self._call_with_hedge(request, timeout_s, hedge_after)
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        if result.ok:
            self.latency.add(result.latency_ms / 1000.0)
        self._observe[_outcome(result)](result.latency_ms / 1000.0)
        return result

    async def _call_then_retry(self, request: Any, timeout_s: float) -> StageCall:
        """No hedge: the call awaited directly (no task, no wait set), and one retry when it failed
        retryably and time and budget remain."""
        deadline = time.perf_counter() + timeout_s
        metadata = outgoing_metadata()
        result = await self._one(request, timeout_s, metadata)
        remaining = deadline - time.perf_counter()
        if not result.ok and result.code in RETRYABLE and remaining > 0.001 and self._spend("retry"):
            result = await self._one(request, remaining, metadata)
            result.attempts = 2
        return result

    async def _call_with_hedge(self, request: Any, timeout_s: float, hedge_after_s: float) -> StageCall:
        """A hedge once `hedge_after_s` passes without an answer, or a retry when the first call fails
        retryably. The first answer wins; the other call is cancelled."""
        deadline = time.perf_counter() + timeout_s
        metadata = outgoing_metadata()
        running = {asyncio.ensure_future(self._one(request, timeout_s, metadata))}
        made = 1
        hedge_at = time.perf_counter() + hedge_after_s
        last: StageCall | None = None
        try:
            while running:
                wait_s = max(0.0, hedge_at - time.perf_counter()) if made == 1 else None
                done, running = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                remaining = deadline - time.perf_counter()
                if not done:  # the hedge delay passed with the first call still out
                    hedge_at = deadline
                    if remaining > 0.001 and self._spend("hedge"):
                        running.add(asyncio.ensure_future(self._one(request, remaining, metadata)))
                        made = 2
                    continue
                last = done.pop().result()
                if last.ok:
                    break
                retry = last.code in RETRYABLE and made == 1 and not running and remaining > 0.001
                if retry and self._spend("retry"):
                    running.add(asyncio.ensure_future(self._one(request, remaining, metadata)))
                    made = 2
        finally:
            for task in running:
                task.cancel()
        assert last is not None  # the loop ends only after a call finished
        last.attempts = made
        return last

    def _spend(self, kind: str) -> bool:
        return self.retry_budget.try_spend(self.stage, kind)

    async def _one(self, request: Any, timeout_s: float, metadata: Metadata) -> StageCall:
        try:
            response, server_ms = await self.transport(request, timeout_s, metadata)
        except StageError as exc:
            late = exc.code == grpc.StatusCode.DEADLINE_EXCEEDED
            message = f"cut off after {timeout_s * 1000:.0f} ms budget" if late else str(exc)
            return StageCall(None, error=message, code=exc.code)
        return StageCall(response, server_ms=server_ms)
