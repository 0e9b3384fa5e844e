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
from funnel.runtime.tracing import tracer
from funnel.v1 import ranking_pb2_grpc, reranking_pb2_grpc, retrieval_pb2_grpc

T = TypeVar("T")


@dataclass
class StageCall(Generic[T]):
    """The outcome of one downstream call: a response, or why there is none."""

    response: T | None
    latency_ms: float
    error: str = ""
    code: grpc.StatusCode | None = None
    server_ms: float = 0.0  # the stage server's own time, from its trailer

    @property
    def ok(self) -> bool:
        return self.response is not None

    @property
    def cause(self) -> str:
        """The metrics label of a failure: cut off at its budget, or an error."""
        return "late" if self.code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"


async def call_stage(
    stage: str, invoke: Callable[[float, tuple], grpc.aio.UnaryUnaryCall], timeout_s: float
) -> StageCall[T]:
    """Run one call with its timeout; never raises for a stage failure, only reports it."""
    with tracer.start_as_current_span(stage, kind=SpanKind.CLIENT) as span:
        result, outcome = await _call(invoke, timeout_s)
        span.set_attribute("funnel.stage", stage)
        span.set_attribute("funnel.outcome", outcome)
        span.set_attribute("funnel.timeout_ms", round(timeout_s * 1000, 1))
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, result.error))
    STAGE_LATENCY.labels(stage, outcome).observe(result.latency_ms / 1000)
    return result


async def _call(invoke: Callable[[float, tuple], grpc.aio.UnaryUnaryCall], timeout_s: float) -> tuple[StageCall, str]:
    started = time.perf_counter()
    if timeout_s <= 0.0005:
        return StageCall(None, 0.0, "no budget left", grpc.StatusCode.DEADLINE_EXCEEDED), "late"
    try:
        call = invoke(timeout_s, outgoing_metadata())
        response = await call
        latency_ms = _ms(started)
        trailers = dict(await call.trailing_metadata() or ())
        server_ms = float(trailers.get(SERVER_TIME_KEY, 0.0))
        outcome, result = "ok", StageCall(response, latency_ms, server_ms=server_ms)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        late = code == grpc.StatusCode.DEADLINE_EXCEEDED
        message = f"cut off after {timeout_s * 1000:.0f} ms budget" if late else f"{code.name}: {exc.details()}"
        result = StageCall(None, _ms(started), message, code)
        outcome = result.cause
    except asyncio.CancelledError:
        raise
    return result, outcome


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class StageClients:
    """One balanced channel per retrieval shard, one each for ranking and re-ranking."""

    def __init__(
        self, shard_targets: list[str], ranking_target: str, reranking_target: str, max_message_bytes: int
    ) -> None:
        self._channels = [open_channel(t, max_message_bytes) for t in shard_targets]
        self.retrieval = [retrieval_pb2_grpc.RetrievalStub(c) for c in self._channels]
        ranking_channel = open_channel(ranking_target, max_message_bytes)
        reranking_channel = open_channel(reranking_target, max_message_bytes)
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
