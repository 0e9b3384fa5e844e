"""The public Recommender service: one request through retrieval, ranking and re-ranking.

Each stage gets its configured budget, capped by what remains of the request's total budget minus
a reserve the gateway keeps for itself. A stage that fails or is cut off degrades the answer
instead of failing it (retrieval -> the gateway's popular fallback, ranking -> retrieval order,
re-ranking -> the gateway enforces content policy itself), and the response says so.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from funnel.policy.document import load_policy
from funnel.runtime.deadline import Budget, budget_from_grpc
from funnel.runtime.errors import Unavailable
from funnel.runtime.logs import REQUEST_ID
from funnel.runtime.metrics import CANDIDATES, DEGRADED
from funnel.runtime.server import Runtime
from funnel.v1 import common_pb2, ranking_pb2, recommender_pb2, recommender_pb2_grpc, reranking_pb2, retrieval_pb2
from funnel.validation import check_context, check_count, check_id, check_ids
from gateway.merge import merge_candidates
from gateway.resilience import LatencyWindow, QualityFactor, RetryBudget
from gateway.safety_net import SafetyNet
from gateway.settings import GatewaySettings
from gateway.stages import Attempts, StageCall, StageClients, call_stage

log = logging.getLogger("funnel.gateway")

OK = common_pb2.STAGE_STATUS_OK
DEGRADED_STATUS = common_pb2.STAGE_STATUS_DEGRADED
FAILED = common_pb2.STAGE_STATUS_FAILED
SKIPPED = common_pb2.STAGE_STATUS_SKIPPED


class RecommenderService(recommender_pb2_grpc.RecommenderServicer):
    service_names = [recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name]

    def __init__(self, runtime: Runtime, settings: GatewaySettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.safety: SafetyNet | None = None
        self.source_limits = settings.source_limits()  # fixed for the process; not rebuilt per request
        self.enabled = settings.enabled_stages()
        self.stages = StageClients(
            settings.shard_targets(),
            settings.ranking_target,
            settings.reranking_target,
            settings.max_message_bytes,
            runtime.tls,
        )
        # One retry budget per downstream target: extra calls are a share of that target's own first
        # calls, so healthy stages never lend a failing one their budget.
        self.ranking_attempts = Attempts(self._retry_budget())
        self.reranking_attempts = Attempts(self._retry_budget())
        self.shard_budgets = [self._retry_budget() for _ in self.stages.retrieval]
        self.shard_latency = [LatencyWindow() for _ in self.stages.retrieval]
        self.quality = QualityFactor(settings.quality_floor)
        recommender_pb2_grpc.add_RecommenderServicer_to_server(self, runtime.server)

    async def start(self) -> None:
        policy = load_policy(Path(self.settings.policy_path))
        self.safety = await self.runtime.run_cpu(
            SafetyNet, Path(self.settings.artifact_dir), policy, self.settings.fallback_candidates
        )
        # Stages that are down do not stop the gateway (it degrades), but warm connections to the
        # others keep connection set-up off the first requests' budgets.
        unreachable = await self.stages.connect(timeout_s=2.0)
        log.info(
            "gateway ready",
            extra={"policy_version": policy.version, "shards": len(self.stages.retrieval), "unreachable": unreachable},
        )
        await self.runtime.readiness.set(True, "fallback catalog and policy loaded")

    async def stop(self) -> None:
        await self.stages.close()

    async def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        s = self.settings
        check_id(request.user_id, "user_id")
        check_count(request.num_results, "num_results", s.max_results)
        check_context(request.context)
        check_ids(request.exclude_item_ids, "exclude_item_ids", s.max_excluded)
        check_ids(request.recent_item_ids, "recent_item_ids", s.max_recent_items)
        safety = self.safety
        if safety is None:
            raise Unavailable("gateway is still loading")

        budget = budget_from_grpc(context.time_remaining(), s.default_deadline_ms / 1000)
        reserve = max(s.local_reserve_ms / 1000, s.local_reserve_fraction * budget.total_s)
        exclude = set(request.exclude_item_ids)
        response = recommender_pb2.RecommendResponse(request_id=REQUEST_ID.get())

        response.quality_factor = self.quality.value
        candidates, user_vector = await self._retrieve(request, budget, reserve, safety, exclude, response)
        ranked = await self._rank(request, candidates, user_vector, budget, reserve, response)
        self.quality.observe(
            max(
                response.stages[0].latency_ms / s.retrieval_budget_ms,
                response.stages[1].latency_ms / s.ranking_budget_ms,
            )
        )
        final = await self._rerank(request, ranked, budget, reserve, safety, exclude, response)

        for candidate in final:
            item = response.items.add(item_id=candidate.item_id, score=candidate.score, source=candidate.source)
            if request.debug:
                item.reasons.extend(candidate.reasons)
        response.degraded = any(stage.status in (DEGRADED_STATUS, FAILED) for stage in response.stages)
        return response

    async def _retrieve(
        self,
        request: recommender_pb2.RecommendRequest,
        budget: Budget,
        reserve: float,
        safety: SafetyNet,
        exclude: set[str],
        response: recommender_pb2.RecommendResponse,
    ) -> tuple[list[common_pb2.Candidate], list[float]]:
        """The fused candidates, and the user tower's vector retrieval computed (empty when no shard answered)."""
        s = self.settings
        # Under latency pressure every source shrinks alike, so the candidate mix is kept.
        limits = {source: self.quality.scale(n) for source, n in self.source_limits.items()}
        retrieve = retrieval_pb2.RetrieveRequest(
            user_id=request.user_id,
            context=request.context,
            num_candidates=self.quality.scale(s.ann_candidates),
            sources=list(limits),
            source_limits=limits,
            exclude_item_ids=request.exclude_item_ids,
            recent_item_ids=request.recent_item_ids,
        )
        timeout = budget.stage_timeout(s.retrieval_budget_ms / 1000, reserve)
        calls: list[StageCall[retrieval_pb2.RetrieveResponse]] = await asyncio.gather(
            *(
                call_stage(
                    "retrieval",
                    lambda t, md, stub=stub: stub.Retrieve(retrieve, timeout=t, metadata=md),
                    timeout,
                    self._shard_attempts(shard),
                )
                for shard, stub in enumerate(self.stages.retrieval)
            )
        )
        for shard, call in enumerate(calls):
            if call.ok:
                self.shard_latency[shard].add(call.latency_ms / 1000)
        answered = [c.response for c in calls if c.ok]
        failed = [f"shard {n}: {c.error}" for n, c in enumerate(calls) if not c.ok]
        slowest = max(calls, key=lambda c: c.latency_ms)  # the shards run in parallel: it sets the pace
        report = response.stages.add(
            stage="retrieval",
            latency_ms=slowest.latency_ms,
            server_ms=slowest.server_ms,
            items_in=len(safety.catalog),
            attempts=max(c.attempts for c in calls),
        )
        report.version = ",".join(sorted({r.index_version for r in answered}))
        candidates = merge_candidates(answered, limits)
        if answered and not failed:
            report.status = OK
        elif answered:
            report.status, report.message = DEGRADED_STATUS, "partial: " + "; ".join(failed)
            DEGRADED.labels("retrieval", "partial").inc()
        else:
            candidates = safety.fallback_candidates(request.user_id, exclude | set(request.recent_item_ids))
            report.status = DEGRADED_STATUS if candidates else FAILED
            report.message = "every shard failed (" + "; ".join(failed) + "); served the gateway's popular fallback"
            report.version = safety.version
            DEGRADED.labels("retrieval", "unavailable").inc()
        report.items_out = len(candidates)
        CANDIDATES.labels("retrieval").observe(len(candidates))
        if not candidates and report.status == FAILED:
            raise Unavailable("retrieval failed and no fallback candidates are available")
        return candidates, list(answered[0].user_vector) if answered else []

    def _retry_budget(self) -> RetryBudget:
        return RetryBudget(self.settings.retry_budget_ratio, self.settings.retry_budget_floor_per_s)

    def _shard_attempts(self, shard: int) -> Attempts:
        """Retries as for every stage, plus a hedge once the call is slower than most recent ones."""
        s = self.settings
        observed = self.shard_latency[shard].quantile(s.hedge_quantile) if s.hedge_quantile > 0 else None
        hedge_after = None if observed is None else max(observed, s.min_hedge_delay_ms / 1000)
        return Attempts(self.shard_budgets[shard], hedge_after)

    async def _rank(
        self,
        request: recommender_pb2.RecommendRequest,
        candidates: list[common_pb2.Candidate],
        user_vector: list[float],
        budget: Budget,
        reserve: float,
        response: recommender_pb2.RecommendResponse,
    ) -> list[common_pb2.Candidate]:
        report = response.stages.add(stage="ranking", items_in=len(candidates))
        if not candidates or "ranking" not in self.enabled:
            report.status = SKIPPED
            report.message = "switched off (--stages); kept retrieval order" if candidates else "no candidates to rank"
            report.items_out = len(candidates)
            return candidates
        rank = ranking_pb2.RankRequest(
            user_id=request.user_id,
            context=request.context,
            candidates=candidates,
            recent_item_ids=request.recent_item_ids,
            user_vector=user_vector,
        )
        timeout = budget.stage_timeout(self.settings.ranking_budget_ms / 1000, reserve)
        call = await call_stage(
            "ranking",
            lambda t, md: self.stages.ranking.Rank(rank, timeout=t, metadata=md),
            timeout,
            self.ranking_attempts,
        )
        report.latency_ms, report.server_ms, report.attempts = call.latency_ms, call.server_ms, call.attempts
        if call.ok:
            report.status, report.version = OK, f"ranker:{call.response.model_version}"
            ranked = list(call.response.candidates)
        else:
            report.status = DEGRADED_STATUS
            report.message = f"ranking failed ({call.error}); kept retrieval order"
            DEGRADED.labels("ranking", call.cause).inc()
            ranked = candidates
        report.items_out = len(ranked)
        CANDIDATES.labels("ranking").observe(len(ranked))
        return ranked

    async def _rerank(
        self,
        request: recommender_pb2.RecommendRequest,
        ranked: list[common_pb2.Candidate],
        budget: Budget,
        reserve: float,
        safety: SafetyNet,
        exclude: set[str],
        response: recommender_pb2.RecommendResponse,
    ) -> list[common_pb2.Candidate]:
        report = response.stages.add(stage="reranking", items_in=len(ranked))
        if ranked and "reranking" not in self.enabled:
            error = "switched off (--stages)"
        elif ranked:
            rerank = reranking_pb2.RerankRequest(
                user_id=request.user_id,
                context=request.context,
                candidates=ranked,
                num_results=request.num_results,
                exclude_item_ids=request.exclude_item_ids,
                debug=request.debug,
                recent_item_ids=request.recent_item_ids,
            )
            timeout = budget.stage_timeout(self.settings.reranking_budget_ms / 1000, reserve)
            call = await call_stage(
                "reranking",
                lambda t, md: self.stages.reranking.Rerank(rerank, timeout=t, metadata=md),
                timeout,
                self.reranking_attempts,
            )
            report.latency_ms, report.server_ms, report.attempts = call.latency_ms, call.server_ms, call.attempts
            if call.ok:
                report.status, report.version = OK, f"policy:{call.response.policy_version}"
                if request.debug:
                    report.rules.extend(call.response.rules)
                final = list(call.response.candidates)
                report.items_out = len(final)
                CANDIDATES.labels("reranking").observe(len(final))
                return final
            error = call.error
            DEGRADED.labels("reranking", call.cause).inc()
        else:
            error = "no candidates"
        # Content policy is never skipped: the gateway applies the same hard filters itself.
        final = safety.enforce(ranked, request, exclude)
        if request.debug:
            for candidate in final:
                candidate.reasons.append(f"gateway safety net: content policy {safety.policy.version} applied")
        report.status = DEGRADED_STATUS if ranked and "reranking" in self.enabled else SKIPPED
        report.message = f"re-ranking not used ({error}); gateway applied content policy and exclusions"
        report.version = f"policy:{safety.policy.version}"
        report.items_out = len(final)
        return final
