"""The public Recommender service: one request through retrieval, ranking and re-ranking.

Each step (`services/gateway/steps.py`) gets its configured budget, capped by what remains of the request's
total budget minus a reserve the gateway keeps for itself. A step that fails or is cut off degrades
the answer instead of failing it (retrieval -> the gateway's popular fallback, ranking -> retrieval
order, re-ranking -> the gateway enforces content policy itself), and the response says so: one
StageReport per step, written here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import grpc

from funnel.live.store import LiveStore, StoreError, connect
from funnel.policy.document import load_policy
from funnel.runtime.clients import ANONYMOUS, CALLER
from funnel.runtime.deadline import budget_from_grpc
from funnel.runtime.errors import Unavailable
from funnel.runtime.logs import REQUEST_ID
from funnel.runtime.metrics import CANDIDATES, CAUSE_LABELS
from funnel.runtime.metrics import DEGRADED as DEGRADED_TOTAL
from funnel.runtime.server import Runtime
from funnel.sources import SOURCE_NAMES
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from funnel.validation import check_context, check_count, check_id, check_ids
from services.gateway.impressions import ImpressionRecorder
from services.gateway.live_state import HydrateLiveState, LiveLimits
from services.gateway.resilience import QualityFactor
from services.gateway.safety_net import SafetyNet
from services.gateway.settings import GatewaySettings
from services.gateway.stages import StageChannels
from services.gateway.steps import (
    DEGRADED,
    FAILED,
    RankCandidates,
    RequestState,
    RerankCandidates,
    RetrieveCandidates,
    Step,
)

log = logging.getLogger("funnel.gateway")


def check_request(request: recommender_pb2.RecommendRequest, settings: GatewaySettings) -> None:
    check_id(request.user_id, "user_id")
    check_count(request.num_results, "num_results", settings.max_results)
    check_context(request.context)
    check_ids(request.exclude_item_ids, "exclude_item_ids", settings.max_excluded)
    check_ids(request.recent_item_ids, "recent_item_ids", settings.max_recent_items)


class Funnel:
    """The steps, and what runs them: the request handler's logic, free of any server, so tests
    can drive it with in-memory stages."""

    def __init__(
        self,
        settings: GatewaySettings,
        steps: list[Step],
        quality: QualityFactor,
        impressions: ImpressionRecorder | None = None,
    ) -> None:
        self.settings = settings
        self.steps = steps
        self.quality = quality
        self.impressions = impressions  # what is served is recorded here, off the request path
        self.source_limits = settings.source_limits()  # fixed for the process; not rebuilt per request

    async def recommend(
        self, request: recommender_pb2.RecommendRequest, time_remaining: float | None, request_id: str = ""
    ) -> recommender_pb2.RecommendResponse:
        s = self.settings
        check_request(request, s)
        budget = budget_from_grpc(time_remaining, s.default_deadline_ms / 1000)
        state = RequestState(
            request=request,
            budget=budget,
            reserve_s=max(s.local_reserve_ms / 1000, s.local_reserve_fraction * budget.total_s),
            # Under latency pressure every source shrinks alike, so the candidate mix is kept.
            source_limits={source: self.quality.scale(n) for source, n in self.source_limits.items()},
            recent_item_ids=list(request.recent_item_ids),
            exclude_item_ids=list(request.exclude_item_ids),
            exclude=set(request.exclude_item_ids),
        )
        response = recommender_pb2.RecommendResponse(request_id=request_id, quality_factor=self.quality.value)
        pressure = 0.0
        later: list[common_pb2.StageReport] = []  # reports that follow the three stages' (see the proto)
        for step in self.steps:
            items_in = step.items_in(state)
            outcome = await step.run(state)
            report = common_pb2.StageReport(
                stage=step.name,
                status=outcome.status,
                cause=outcome.cause,
                message=outcome.message,
                version=outcome.version,
                latency_ms=outcome.latency_ms,
                server_ms=outcome.server_ms,
                attempts=outcome.attempts,
                items_in=items_in,
                items_out=outcome.items_out,
                rules=outcome.rules,
            )
            if step.reported_after_stages:
                later.append(report)
            else:
                response.stages.append(report)
            if outcome.status in (DEGRADED, FAILED):
                DEGRADED_TOTAL.labels(step.name, CAUSE_LABELS[outcome.cause]).inc()
            CANDIDATES.labels(step.name).observe(outcome.items_out)
            if step.counts_for_pressure:
                pressure = max(pressure, outcome.latency_ms / step.budget_ms)
            if outcome.status == FAILED:
                raise Unavailable(f"{step.name} failed and there is no fallback: {outcome.message}")
        self.quality.observe(pressure)
        response.stages.extend(later)

        final = state.final
        assert final is not None  # the last step always leaves an answer (its own or the safety net's)
        names = [SOURCE_NAMES.get(code, "") for code in final.sources.tolist()]
        for n, (item_id, score, source) in enumerate(zip(final.item_ids, final.scores.tolist(), names, strict=True)):
            item = response.items.add(item_id=item_id, score=score, source=source)
            if request.debug and n < len(state.reasons):
                item.reasons.extend(state.reasons[n])
        response.degraded = any(stage.status in (DEGRADED, FAILED) for stage in response.stages)
        if self.impressions is not None:
            caller = CALLER.get()
            self.impressions.offer(request.user_id, final.item_ids, request_id, caller.name if caller else ANONYMOUS)
        return response


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    service_names = [recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name]

    def __init__(self, runtime: Runtime, settings: GatewaySettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.channels = StageChannels(settings, runtime.tls)
        self.funnel: Funnel | None = None
        self.store: LiveStore | None = None
        self.impressions: ImpressionRecorder | None = None
        recommender_pb2_grpc.add_RecommenderServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        s = self.settings
        policy = load_policy(Path(s.policy_path))
        safety = await self.runtime.run_cpu(SafetyNet, Path(s.artifact_dir), policy, s.fallback_candidates)
        enabled = s.enabled_stages()
        steps: list[Step] = [
            RetrieveCandidates(self.channels.retrieval, s.retrieval_budget_ms, safety),
            RankCandidates([self.channels.ranking], s.ranking_budget_ms, "ranking" in enabled),
            RerankCandidates([self.channels.reranking], s.reranking_budget_ms, safety, "reranking" in enabled),
        ]
        if s.state_store:
            steps.insert(0, await self._live_state())
        # Stages that are down do not stop the gateway (it degrades), but warm connections to the
        # others keep connection set-up off the first requests' budgets.
        unreachable = await self.channels.connect(timeout_s=2.0)
        self.funnel = Funnel(s, steps, QualityFactor(s.quality_floor), self.impressions)
        log.info(
            "gateway ready",
            extra={
                "policy_version": policy.version,
                "shards": len(self.channels.retrieval),
                "unreachable": unreachable,
            },
        )
        await self.runtime.readiness.set(True, "fallback catalog and policy loaded")

    async def _live_state(self) -> HydrateLiveState:
        s = self.settings
        # The read's socket timeout is a backstop; each read is cut off at the step's budget.
        self.store = LiveStore(
            connect(s.state_store, 1.0, s.state_store_password_file, s.state_store_cluster), s.retention()
        )
        # A warm connection keeps its set-up off the first request's budget; a store that is down
        # does not stop the gateway (answers degrade until it returns).
        with contextlib.suppress(StoreError):
            await self.store.ping()
        if s.record_impressions:
            self.impressions = ImpressionRecorder(self.store, s.impression_queue, s.impression_linger_ms / 1000)
            self.impressions.start()
        limits = LiveLimits(
            recent=s.live_recent_items,
            dismissed=s.live_dismissed_items,
            served=s.served_filter_items if s.served_filter_seconds > 0 else 0,
            max_recent=s.max_recent_items,
            max_excluded=s.max_excluded,
        )
        return HydrateLiveState(self.store, s.state_budget_ms, limits)

    async def stop(self) -> None:
        if self.impressions is not None:
            await self.impressions.stop()
        if self.store is not None:
            await self.store.close()
        await self.channels.close()

    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        funnel = self.funnel
        if funnel is None:
            check_request(request, self.settings)  # bad input is refused as such, loaded or not
            raise Unavailable("gateway is still loading")
        return await funnel.recommend(request, context.time_remaining(), REQUEST_ID.get())
