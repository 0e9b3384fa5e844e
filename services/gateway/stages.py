"""The gateway's connections to its stages: one balanced channel per target, a StageClient on each."""

from __future__ import annotations

import asyncio

import grpc

from funnel.runtime.channels import open_channel
from funnel.runtime.tls import Tls
from funnel.v2 import ranking_pb2_grpc, reranking_pb2_grpc, retrieval_pb2_grpc
from services.gateway.resilience import RetryBudget
from services.gateway.settings import GatewaySettings
from services.gateway.stage_client import GrpcTransport, StageClient


class StageChannels:
    """A channel per retrieval shard (balanced over its replicas), one each for ranking and
    re-ranking, and the StageClient that calls each. Each target has its own retry budget, so a
    healthy stage never lends a failing one its budget; only shard calls are hedged."""

    def __init__(self, settings: GatewaySettings, tls: Tls) -> None:
        s = settings

        def budget() -> RetryBudget:
            return RetryBudget(s.retry_budget_ratio, s.retry_budget_floor_per_s)

        def channel(target: str) -> grpc.aio.Channel:
            opened = open_channel(target, s.max_message_bytes, tls)
            self._channels.append(opened)
            return opened

        self._channels: list[grpc.aio.Channel] = []
        self.retrieval = [
            StageClient(
                "retrieval",
                GrpcTransport(retrieval_pb2_grpc.RetrievalStub(channel(target)).Retrieve),
                budget(),
                s.hedge_quantile,
                s.min_hedge_delay_ms / 1000,
            )
            for target in s.shard_targets()
        ]
        ranking = ranking_pb2_grpc.RankingStub(channel(s.ranking_target))
        self.ranking = StageClient("ranking", GrpcTransport(ranking.Rank), budget())
        reranking = reranking_pb2_grpc.RerankingStub(channel(s.reranking_target))
        self.reranking = StageClient("reranking", GrpcTransport(reranking.Rerank), budget())

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
