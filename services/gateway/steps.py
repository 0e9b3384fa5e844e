"""The funnel's steps as the gateway runs them: each one object that builds its request, calls its
stage's clients within its budget, accepts the answer or falls back, and says how it went.

`Recommend` runs them in order over one `RequestState` and writes every StageReport from their
`Outcome`s in one place. A step's clients are injected, so every branch (partial shards, fallback,
skipped stage, safety net, retry, hedge) runs in-process against in-memory stages in the tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from funnel.candidates import Candidates
from funnel.retrieval.merge import merge_candidates
from funnel.runtime.deadline import Budget
from funnel.runtime.errors import InvalidArgument
from funnel.sources import PINNED, SOURCE_CODES
from funnel.v1 import common_pb2, recommender_pb2
from funnel.v2 import ranking_pb2, reranking_pb2, retrieval_pb2
from funnel.wire import FLOAT32, read_columns
from services.gateway.safety_net import SafetyNet
from services.gateway.stage_client import StageCall, StageClient

OK = common_pb2.STAGE_STATUS_OK
DEGRADED = common_pb2.STAGE_STATUS_DEGRADED
FAILED = common_pb2.STAGE_STATUS_FAILED
SKIPPED = common_pb2.STAGE_STATUS_SKIPPED
SWITCHED_OFF = common_pb2.DEGRADATION_CAUSE_SWITCHED_OFF
NO_CANDIDATES = common_pb2.DEGRADATION_CAUSE_NO_CANDIDATES
PARTIAL = common_pb2.DEGRADATION_CAUSE_PARTIAL
ERROR = common_pb2.DEGRADATION_CAUSE_ERROR
DEADLINE = common_pb2.DEGRADATION_CAUSE_DEADLINE
UNAVAILABLE = common_pb2.DEGRADATION_CAUSE_UNAVAILABLE
_SKIPPED_BECAUSE = {SWITCHED_OFF: "switched off (--stages)", NO_CANDIDATES: "no candidates"}
_RANK_SCORES = {"scores": (ranking_pb2.RankResponse.DESCRIPTOR.fields_by_name["scores"].number, FLOAT32, FLOAT32)}


@dataclass
class RequestState:
    """One request on its way through the steps: what each step reads and leaves for the next."""

    request: recommender_pb2.RecommendRequest
    budget: Budget
    reserve_s: float
    source_limits: dict[str, int]  # candidates kept per source, scaled by the quality factor
    # What the stages are sent: the request's lists, with the user's live state folded in.
    recent_item_ids: list[str] = field(default_factory=list)  # newest last
    exclude_item_ids: list[str] = field(default_factory=list)
    exclude: set[str] = field(default_factory=set)  # every exclusion, for the gateway's own fallbacks
    candidates: Candidates = field(default_factory=Candidates.empty)  # best first
    user_vector: Sequence[float] = ()
    user_vector_version: str = ""  # the bundle whose user tower made it
    final: Candidates | None = None  # the answer, in display order
    reasons: list[list[str]] = field(default_factory=list)  # per final item, with debug


@dataclass
class Outcome:
    """How a step went: a StageReport's worth, before the gateway writes it."""

    status: int
    cause: int = 0
    message: str = ""
    version: str = ""
    items_out: int = 0
    latency_ms: float = 0.0
    server_ms: float = 0.0
    attempts: int = 0
    rules: Sequence[common_pb2.RuleReport] = ()  # what each policy rule did, with debug


class Step:
    """Build, call within budget, accept or fall back. Subclasses say what each of those means."""

    name: ClassVar[str]
    counts_for_pressure: ClassVar[bool] = False  # its latency drives the quality factor
    reported_after_stages: ClassVar[bool] = False  # its report follows the three stages' in the answer

    def __init__(self, clients: list[StageClient], budget_ms: float, enabled: bool = True) -> None:
        self.clients = clients
        self.budget_ms = budget_ms
        self.enabled = enabled

    def items_in(self, state: RequestState) -> int:
        return len(state.candidates)

    def skip_cause(self, state: RequestState) -> int | None:
        if not self.enabled:
            return SWITCHED_OFF
        return None if len(state.candidates) else NO_CANDIDATES

    def build(self, state: RequestState) -> Any:
        raise NotImplementedError

    def accept(self, state: RequestState, calls: list[StageCall]) -> Outcome:
        raise NotImplementedError

    def fall_back(self, state: RequestState, outcome: Outcome) -> Outcome:
        """Leave `state` usable without this stage; `outcome` says why (status and cause set)."""
        raise NotImplementedError

    async def run(self, state: RequestState) -> Outcome:
        skip = self.skip_cause(state)
        if skip is not None:
            return self.fall_back(state, Outcome(SKIPPED, skip, _SKIPPED_BECAUSE[skip]))
        timeout = state.budget.stage_timeout(self.budget_ms / 1000, state.reserve_s)
        request = self.build(state)
        if len(self.clients) == 1:
            calls = [await self.clients[0].call(request, timeout)]
        else:
            calls = list(await asyncio.gather(*(client.call(request, timeout) for client in self.clients)))
        outcome = self.accept(state, calls)
        slowest = max(calls, key=lambda call: call.latency_ms)  # the calls run in parallel: it sets the pace
        outcome.latency_ms, outcome.server_ms = slowest.latency_ms, slowest.server_ms
        outcome.attempts = max(call.attempts for call in calls)
        return outcome


class RetrieveCandidates(Step):
    """Every shard asked at once; each source merged across shards by its score, then the sources
    fused. Some shards failing: the others' answer, DEGRADED (partial). Every shard failing: the
    gateway's own popular list."""

    name = "retrieval"
    counts_for_pressure = True

    def __init__(self, clients: list[StageClient], budget_ms: float, safety: SafetyNet) -> None:
        super().__init__(clients, budget_ms)
        self.safety = safety

    def items_in(self, state: RequestState) -> int:
        return len(self.safety.catalog)

    def skip_cause(self, state: RequestState) -> int | None:
        return None  # there is no funnel without candidates: retrieval always runs

    def build(self, state: RequestState) -> retrieval_pb2.RetrieveRequest:
        request = state.request
        limits = state.source_limits
        return retrieval_pb2.RetrieveRequest(
            user_id=request.user_id,
            context=request.context,
            num_candidates=max(limits.values()),
            sources=[SOURCE_CODES[source] for source in limits],
            source_limits=[
                retrieval_pb2.SourceLimit(source=SOURCE_CODES[source], limit=n) for source, n in limits.items()
            ],
            exclude_item_ids=state.exclude_item_ids,
            recent_item_ids=state.recent_item_ids,
        )

    def accept(self, state: RequestState, calls: list[StageCall]) -> Outcome:
        shards: list[Candidates] = []
        failed: list[tuple[int, StageCall]] = []
        answered: list[retrieval_pb2.RetrieveResponse] = []
        for shard, call in enumerate(calls):
            if call.ok:
                try:
                    shards.append(Candidates.read(call.response.candidates))
                    answered.append(call.response)
                    continue
                except InvalidArgument as exc:  # a shard's bad answer is that shard's failure
                    call.response, call.error, call.code = None, f"malformed answer: {exc.message}", None
            failed.append((shard, call))
        errors = "; ".join(f"shard {n}: {call.error}" for n, call in failed)
        if not answered:
            causes = Counter(call.cause or ERROR for _, call in failed)
            return self.fall_back(state, Outcome(DEGRADED, causes.most_common(1)[0][0], errors))
        state.candidates = merge_candidates(shards, state.source_limits)
        state.user_vector = answered[0].user_vector
        state.user_vector_version = answered[0].index_version
        version = ",".join(sorted({response.index_version for response in answered}))
        if failed:
            return Outcome(DEGRADED, PARTIAL, f"partial: {errors}", version, len(state.candidates))
        return Outcome(OK, version=version, items_out=len(state.candidates))

    def fall_back(self, state: RequestState, outcome: Outcome) -> Outcome:
        request = state.request
        state.candidates = self.safety.fallback_candidates(request.user_id, state.exclude | set(state.recent_item_ids))
        if not len(state.candidates):
            outcome.status = FAILED
        outcome.message = f"every shard failed ({outcome.message}); served the gateway's popular fallback"
        outcome.version = self.safety.version
        outcome.items_out = len(state.candidates)
        return outcome


class RankCandidates(Step):
    """The ranker scores every candidate; the list is re-sorted by its scores. Failing or late:
    retrieval's order is kept."""

    name = "ranking"
    counts_for_pressure = True

    def build(self, state: RequestState) -> ranking_pb2.RankRequest:
        request = state.request
        return ranking_pb2.RankRequest(
            user_id=request.user_id,
            context=request.context,
            # Ranking reads ids and sources (its features); scores would be sent for nothing.
            candidates=state.candidates.to_message(scores="none"),
            recent_item_ids=state.recent_item_ids,
            user_vector=state.user_vector,
            user_vector_version=state.user_vector_version,
        )

    def accept(self, state: RequestState, calls: list[StageCall]) -> Outcome:
        call = calls[0]
        if not call.ok:
            return self.fall_back(state, Outcome(DEGRADED, call.cause, f"ranking failed ({call.error})"))
        scores = read_columns(call.response, _RANK_SCORES)["scores"]
        if len(scores) != len(state.candidates) or not np.isfinite(scores).all():
            message = f"ranking answered {len(scores)} scores (non-finite or not one per candidate)"
            return self.fall_back(state, Outcome(DEGRADED, ERROR, message))
        state.candidates.ranking_scores = scores
        state.candidates = state.candidates.take(np.argsort(-scores, kind="stable"))
        return Outcome(OK, version=f"ranker:{call.response.model_version}", items_out=len(state.candidates))

    def fall_back(self, state: RequestState, outcome: Outcome) -> Outcome:
        outcome.message += "; kept retrieval order"
        outcome.items_out = len(state.candidates)
        return outcome


class RerankCandidates(Step):
    """The policy turns the ranked candidates into the final list. Failing, late or switched off:
    the gateway applies content policy and the request's exclusions itself, never returning an
    unfiltered item."""

    name = "reranking"

    def __init__(self, clients: list[StageClient], budget_ms: float, safety: SafetyNet, enabled: bool = True) -> None:
        super().__init__(clients, budget_ms, enabled)
        self.safety = safety

    def build(self, state: RequestState) -> reranking_pb2.RerankRequest:
        request = state.request
        # The policy orders by the latest scores and answers positions in the list, which the
        # gateway keeps: the other columns are only read for debug reasons.
        if request.debug:
            candidates = state.candidates.to_message()
        else:
            candidates = state.candidates.to_message(sources=False, scores="latest")
        return reranking_pb2.RerankRequest(
            user_id=request.user_id,
            context=request.context,
            candidates=candidates,
            num_results=request.num_results,
            exclude_item_ids=state.exclude_item_ids,
            debug=request.debug,
            recent_item_ids=state.recent_item_ids,
        )

    def accept(self, state: RequestState, calls: list[StageCall]) -> Outcome:
        call = calls[0]
        if not call.ok:
            return self.fall_back(state, Outcome(DEGRADED, call.cause, call.error))
        response: reranking_pb2.RerankResponse = call.response
        positions = np.array(response.positions, dtype=np.int64)
        ids = response.candidates.item_ids
        if len(positions) != len(ids) or (len(positions) and positions.max() >= len(state.candidates)):
            message = f"malformed answer: {len(positions)} positions for {len(ids)} items"
            return self.fall_back(state, Outcome(DEGRADED, ERROR, message))
        pinned = np.flatnonzero(positions < 0)
        if len(pinned):  # items the policy placed that the funnel did not find
            extra = state.candidates.extended([ids[n] for n in pinned.tolist()], SOURCE_CODES[PINNED])
            positions[pinned] = len(state.candidates) + np.arange(len(pinned))
            state.final = extra.take(positions)
        else:
            state.final = state.candidates.take(positions)
        outcome = Outcome(OK, version=f"policy:{response.policy_version}", items_out=len(state.final))
        if state.request.debug:
            state.reasons = [list(entry.reasons) for entry in response.reasons]
            outcome.rules = response.rules
        return outcome

    def fall_back(self, state: RequestState, outcome: Outcome) -> Outcome:
        request = state.request
        state.final = self.safety.enforce(
            state.candidates,
            request.user_id,
            request.context,
            request.num_results,
            state.exclude,
            state.recent_item_ids,
        )
        if request.debug:
            note = f"gateway safety net: content policy {self.safety.policy.version} applied"
            state.reasons = [[note] for _ in range(len(state.final))]
        outcome.message = f"re-ranking not used ({outcome.message}); gateway applied content policy and exclusions"
        outcome.version = f"policy:{self.safety.policy.version}"
        outcome.items_out = len(state.final)
        return outcome
