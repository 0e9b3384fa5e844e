"""The gateway's request handling in-process: every degradation branch against in-memory stages.

The Funnel (the steps and the loop that runs them) is built exactly as the gateway builds it, with
StageClients whose transport is an in-memory stage instead of a gRPC channel. Retrieval and
re-ranking run their services' own request code; faults are injected per call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import latest_version
from funnel.policy.document import load_policy
from funnel.runtime.errors import InvalidArgument, Unavailable
from funnel.sources import SOURCE_CODES
from funnel.v1 import common_pb2, recommender_pb2
from funnel.v2 import ranking_pb2
from services.gateway.resilience import QualityFactor, RetryBudget
from services.gateway.safety_net import SafetyNet
from services.gateway.servicer import Funnel
from services.gateway.settings import GatewaySettings
from services.gateway.stage_client import StageClient
from services.gateway.steps import RankCandidates, RerankCandidates, RetrieveCandidates
from tests.conftest import POLICY
from tests.in_memory_stages import Faults, InMemoryStage, reranking_handler, retrieval_handler, reverse_ranking

OK = common_pb2.STAGE_STATUS_OK
DEGRADED = common_pb2.STAGE_STATUS_DEGRADED
SKIPPED = common_pb2.STAGE_STATUS_SKIPPED
Cause = common_pb2.DegradationCause


@dataclass
class Handlers:
    shards: list
    reranking: object
    safety: SafetyNet
    catalog: Catalog


@pytest.fixture(scope="module")
def handlers(artifacts: Path) -> Handlers:
    policy = load_policy(POLICY)
    return Handlers(
        [retrieval_handler(artifacts, policy, shard, 2) for shard in range(2)],
        reranking_handler(artifacts, policy),
        SafetyNet(artifacts, policy, 500),
        Catalog.load(latest_version(artifacts / "bundles")),
    )


@dataclass
class Built:
    funnel: Funnel
    shards: list[InMemoryStage]
    ranking: InMemoryStage
    reranking: InMemoryStage
    clients: dict[str, list[StageClient]] = field(default_factory=dict)

    def recommend(self, time_remaining: float | None = None, **fields) -> recommender_pb2.RecommendResponse:
        fields = {"user_id": "u0000001", "num_results": 10, "context": common_pb2.Context(country="US")} | fields
        request = recommender_pb2.RecommendRequest(**fields)
        return asyncio.run(self.funnel.recommend(request, time_remaining, "test"))


def build(
    handlers: Handlers,
    artifacts: Path,
    shard_faults: tuple[Faults | None, Faults | None] = (None, None),
    ranking: Faults | None = None,
    reranking: Faults | None = None,
    **settings,
) -> Built:
    s = GatewaySettings(
        retrieval_shards="a;b", ranking_target="r", reranking_target="p", artifact_dir=str(artifacts), **settings
    )
    shards = [InMemoryStage(handle, faults) for handle, faults in zip(handlers.shards, shard_faults, strict=True)]
    rank = InMemoryStage(reverse_ranking, ranking)
    rerank = InMemoryStage(handlers.reranking, reranking)

    def budget() -> RetryBudget:
        return RetryBudget(s.retry_budget_ratio, s.retry_budget_floor_per_s)

    shard_clients = [
        StageClient("retrieval", stage, budget(), s.hedge_quantile, s.min_hedge_delay_ms / 1000) for stage in shards
    ]
    enabled = s.enabled_stages()
    steps = [
        RetrieveCandidates(shard_clients, s.retrieval_budget_ms, handlers.safety),
        RankCandidates([StageClient("ranking", rank, budget())], s.ranking_budget_ms, "ranking" in enabled),
        RerankCandidates(
            [StageClient("reranking", rerank, budget())], s.reranking_budget_ms, handlers.safety, "reranking" in enabled
        ),
    ]
    return Built(Funnel(s, steps, QualityFactor(s.quality_floor)), shards, rank, rerank, {"retrieval": shard_clients})


def report(response: recommender_pb2.RecommendResponse, name: str) -> common_pb2.StageReport:
    return next(stage for stage in response.stages if stage.stage == name)


def test_every_stage_answering_gives_one_ok_report_each_and_the_ranked_reranked_answer(handlers, artifacts):
    built = build(handlers, artifacts)
    response = built.recommend(debug=True)
    assert [(s.stage, s.status, s.cause) for s in response.stages] == [
        ("retrieval", OK, 0),
        ("ranking", OK, 0),
        ("reranking", OK, 0),
    ]
    assert not response.degraded and len(response.items) == 10
    assert report(response, "ranking").version == "ranker:reverse"
    # Ranking received retrieval's fused list (ids and sources), and re-ranking the ranked one.
    ranked = built.ranking.requests[0].candidates
    reranked = built.reranking.requests[0].candidates
    assert len(ranked.sources) == len(ranked.item_ids) > 100 and not ranked.retrieval_scores
    assert list(reranked.item_ids) == list(ranked.item_ids)[::-1], "the gateway sorts by the ranker's scores"
    assert list(reranked.ranking_scores) == sorted(reranked.ranking_scores, reverse=True)
    assert all(item.reasons and item.source for item in response.items)
    assert report(response, "reranking").rules, "rule counts with debug"


def test_one_shard_failing_gives_the_others_answer_marked_partial(handlers, artifacts):
    built = build(handlers, artifacts, shard_faults=(None, Faults(code=grpc.StatusCode.INTERNAL)))
    response = built.recommend()
    retrieval = report(response, "retrieval")
    assert (retrieval.status, retrieval.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_PARTIAL"))
    assert retrieval.message.startswith("partial: shard 1")
    ranked = built.ranking.requests[0].candidates.item_ids
    shard_one = set(built.shards[0].handler(built.shards[0].requests[0]).candidates.item_ids)
    assert set(ranked) <= shard_one, "only the answering shard's items"
    assert response.degraded and len(response.items) == 10
    assert built.shards[1].calls == 1, "INTERNAL is not retried: the replica took the call"


def test_every_shard_failing_serves_the_gateways_popular_fallback_under_content_policy(handlers, artifacts):
    down = Faults(code=grpc.StatusCode.UNAVAILABLE)
    built = build(handlers, artifacts, shard_faults=(down, down))
    teen = common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_PG13)
    response = built.recommend(context=teen)
    retrieval = report(response, "retrieval")
    assert (retrieval.status, retrieval.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_UNAVAILABLE"))
    assert retrieval.version == handlers.safety.version
    assert {item.source for item in response.items} == {"fallback_popular"}
    rows = handlers.catalog.index.rows([item.item_id for item in response.items])
    assert (handlers.catalog.maturity[rows] <= common_pb2.MATURITY_RATING_PG13).all()
    assert [s.calls for s in built.shards] == [2, 2], "each unavailable shard retried once, within budget"


def test_no_fallback_and_no_shard_fails_the_request_unavailable(handlers, artifacts):
    down = Faults(code=grpc.StatusCode.UNAVAILABLE)
    built = build(handlers, artifacts, shard_faults=(down, down))
    built.funnel.steps[0].safety = SafetyNet(artifacts, load_policy(POLICY), fallback_count=1)
    top = handlers.safety.fallback_candidates("nobody", set()).item_ids[0]
    with pytest.raises(Unavailable, match="retrieval failed and there is no fallback"):
        built.recommend(exclude_item_ids=[top])


def test_ranking_switched_off_is_skipped_and_retrieval_order_kept(handlers, artifacts):
    built = build(handlers, artifacts, stages="retrieval,reranking")
    response = built.recommend()
    ranking = report(response, "ranking")
    assert (ranking.status, ranking.cause) == (SKIPPED, Cause.Value("DEGRADATION_CAUSE_SWITCHED_OFF"))
    assert not response.degraded and built.ranking.calls == 0
    sent = built.reranking.requests[0].candidates
    assert not sent.ranking_scores and list(sent.retrieval_scores) == sorted(sent.retrieval_scores, reverse=True)


@pytest.mark.parametrize(("code", "calls"), [(grpc.StatusCode.INTERNAL, 1), (grpc.StatusCode.RESOURCE_EXHAUSTED, 1)])
def test_ranking_failing_keeps_retrieval_order_with_a_typed_cause(handlers, artifacts, code, calls):
    built = build(handlers, artifacts, ranking=Faults(code=code))
    response = built.recommend()
    ranking = report(response, "ranking")
    cause = "DEGRADATION_CAUSE_ERROR" if code == grpc.StatusCode.INTERNAL else "DEGRADATION_CAUSE_OVERLOADED"
    assert (ranking.status, ranking.cause) == (DEGRADED, Cause.Value(cause))
    assert built.ranking.calls == calls and response.degraded and len(response.items) == 10
    assert not built.reranking.requests[0].candidates.ranking_scores


def test_an_unavailable_ranking_replica_is_retried_once_and_the_answer_is_ranked(handlers, artifacts):
    built = build(handlers, artifacts, ranking=Faults(code=grpc.StatusCode.UNAVAILABLE, calls=(1,)))
    response = built.recommend()
    ranking = report(response, "ranking")
    assert (ranking.status, ranking.attempts) == (OK, 2)
    assert built.ranking.calls == 2 and not response.degraded


def test_an_exhausted_retry_budget_sends_no_retry(handlers, artifacts):
    unavailable = Faults(code=grpc.StatusCode.UNAVAILABLE)
    built = build(handlers, artifacts, ranking=unavailable, retry_budget_ratio=0.0, retry_budget_floor_per_s=0.0)
    attempts = [report(built.recommend(), "ranking").attempts for _ in range(22)]
    assert attempts == [2] * 20 + [1, 1], "the 20-token reserve, then no retry without a refill"


def test_ranking_answering_the_wrong_number_of_scores_is_a_degraded_stage_not_a_crash(handlers, artifacts):
    built = build(handlers, artifacts)
    built.ranking.handler = lambda request: ranking_pb2.RankResponse(scores=[0.5, 0.4], model_version="bad")
    response = built.recommend()
    ranking = report(response, "ranking")
    assert (ranking.status, ranking.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_ERROR"))
    assert "2 scores" in ranking.message and len(response.items) == 10


def test_late_ranking_is_cut_off_at_its_budget(handlers, artifacts):
    built = build(handlers, artifacts, ranking=Faults(delay_s=5.0), ranking_budget_ms=50)
    response = built.recommend()
    ranking = report(response, "ranking")
    assert (ranking.status, ranking.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_DEADLINE"))
    assert 40 <= ranking.latency_ms < 1000


def test_late_reranking_falls_back_to_the_safety_net_which_never_lets_an_unsafe_item_through(handlers, artifacts):
    built = build(handlers, artifacts, reranking=Faults(delay_s=5.0), reranking_budget_ms=50)
    teen = common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_PG13)
    excluded = built.recommend(context=teen).items[0].item_id
    response = built.recommend(context=teen, exclude_item_ids=[excluded], debug=True)
    reranking = report(response, "reranking")
    assert (reranking.status, reranking.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_DEADLINE"))
    assert reranking.version.startswith("policy:")
    ids = [item.item_id for item in response.items]
    rows = handlers.catalog.index.rows(ids)
    assert len(ids) == 10 and excluded not in ids and len(set(ids)) == 10
    assert (handlers.catalog.maturity[rows] <= common_pb2.MATURITY_RATING_PG13).all()
    assert all("gateway safety net" in item.reasons[0] for item in response.items)


def test_reranking_switched_off_is_skipped_and_content_policy_still_applies(handlers, artifacts):
    built = build(handlers, artifacts, stages="retrieval,ranking")
    response = built.recommend(context=common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_G))
    reranking = report(response, "reranking")
    assert (reranking.status, reranking.cause) == (SKIPPED, Cause.Value("DEGRADATION_CAUSE_SWITCHED_OFF"))
    rows = handlers.catalog.index.rows([item.item_id for item in response.items])
    assert len(rows) == 10 and (handlers.catalog.maturity[rows] <= common_pb2.MATURITY_RATING_G).all()
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True), "ranked order, filtered"


def test_a_slow_shard_is_hedged_once_its_latency_is_known_and_the_loser_cancelled(handlers, artifacts):
    built = build(handlers, artifacts, min_hedge_delay_ms=1)
    for _ in range(25):  # prime shard 1's latency window with fast calls
        built.recommend()
    slow_call = built.shards[1].calls + 1
    built.shards[1].faults = Faults(delay_s=2.0, calls=(slow_call,))
    response = built.recommend()
    retrieval = report(response, "retrieval")
    assert (retrieval.status, retrieval.attempts) == (OK, 2)
    assert retrieval.latency_ms < 1000, "the hedge answered, not the slow call"
    assert built.shards[1].cancelled == 1, "the slow call was cancelled once the hedge won"


def test_no_budget_left_skips_the_call_and_degrades_with_deadline(handlers, artifacts):
    built = build(handlers, artifacts)
    response = built.recommend(time_remaining=0.004)
    retrieval = report(response, "retrieval")
    assert (retrieval.status, retrieval.cause) == (DEGRADED, Cause.Value("DEGRADATION_CAUSE_DEADLINE"))
    assert built.shards[0].calls == 0 and {item.source for item in response.items} == {"fallback_popular"}


def test_stages_near_their_budgets_shrink_the_candidates_asked_for(handlers, artifacts):
    built = build(handlers, artifacts, ranking=Faults(delay_s=0.045), ranking_budget_ms=50)
    quality = built.funnel.quality
    quality.interval_s = 0.0  # move on every request
    for _ in range(15):
        built.recommend()
    assert quality.value < 0.6
    limits = {entry.source: entry.limit for entry in built.shards[0].requests[-1].source_limits}
    assert limits[SOURCE_CODES["ann"]] < 0.6 * 300
    assert built.recommend().quality_factor == pytest.approx(quality.value, abs=0.25)


def test_bad_input_is_refused_before_any_stage_is_called(handlers, artifacts):
    built = build(handlers, artifacts)
    with pytest.raises(InvalidArgument, match="num_results"):
        built.recommend(num_results=0)
    assert all(stage.calls == 0 for stage in (*built.shards, built.ranking, built.reranking))


class FakeStore:
    """The online store's read, with a state to return or a fault to inject."""

    def __init__(self, state=None, error: Exception | None = None, delay_s: float = 0.0) -> None:
        self.state, self.error, self.delay_s = state, error, delay_s
        self.reads: list[tuple] = []

    async def read(self, user_id: str, now_ms: int, recent: int, dismissed: int, served: int):
        self.reads.append((user_id, recent, dismissed, served))
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.state


def with_live_state(built: Built, store: FakeStore, budget_ms: float = 10.0, max_excluded: int = 1000) -> Built:
    from services.gateway.live_state import HydrateLiveState, LiveLimits

    limits = LiveLimits(recent=50, dismissed=500, served=300, max_recent=4, max_excluded=max_excluded)
    built.funnel.steps.insert(0, HydrateLiveState(store, budget_ms, limits))  # type: ignore[arg-type]
    return built


def test_live_state_joins_what_every_stage_is_sent_and_reports_after_the_stages(handlers, artifacts):
    from funnel.live.schema import LiveState

    ids = [str(item) for item in handlers.catalog.item_ids[100:110]]
    state = LiveState(recent=[ids[0], ids[1], ids[2]], dismissed=[ids[3]], served=[ids[4], ids[5]])
    built = with_live_state(build(handlers, artifacts), FakeStore(state))
    response = built.recommend(recent_item_ids=[ids[1], ids[6]], exclude_item_ids=[ids[7]])
    assert [s.stage for s in response.stages] == ["retrieval", "ranking", "reranking", "live_state"]
    live = report(response, "live_state")
    assert (live.status, live.items_out) == (OK, 6) and not response.degraded
    # Newest last, each once, at most what the stages accept (4 here); the client's exclusions first.
    expected_recent = [ids[0], ids[2], ids[1], ids[6]]
    for sent in (built.shards[0].requests[0], built.ranking.requests[0], built.reranking.requests[0]):
        assert list(sent.recent_item_ids) == expected_recent
    for sent in (built.shards[0].requests[0], built.reranking.requests[0]):
        assert list(sent.exclude_item_ids) == [ids[7], ids[3], ids[4], ids[5]]
    assert not {ids[3], ids[4], ids[5], ids[7]} & {item.item_id for item in response.items}


def test_exclusions_stay_within_what_the_stages_accept(handlers, artifacts):
    from funnel.live.schema import LiveState

    ids = [str(item) for item in handlers.catalog.item_ids[200:260]]
    built = with_live_state(build(handlers, artifacts), FakeStore(LiveState([], ids[:30], ids[30:])), max_excluded=20)
    built.recommend(exclude_item_ids=ids[:5])
    assert list(built.reranking.requests[0].exclude_item_ids) == ids[:20], "the client's, then the newest dismissed"


def test_a_store_that_fails_degrades_to_stored_history_and_the_stages_get_the_request_alone(handlers, artifacts):
    from funnel.live.store import StoreError

    built = with_live_state(build(handlers, artifacts), FakeStore(error=StoreError("ConnectionError: refused")))
    response = built.recommend(recent_item_ids=["i0000100"])
    live = report(response, "live_state")
    assert (live.status, live.cause) == (DEGRADED, Cause.DEGRADATION_CAUSE_UNAVAILABLE)
    assert "refused" in live.message and "stored history" in live.message
    assert response.degraded and len(response.items) == 10
    assert all(report(response, name).status == OK for name in ("retrieval", "ranking", "reranking"))
    assert list(built.shards[0].requests[0].recent_item_ids) == ["i0000100"]


def test_a_store_that_hangs_is_cut_off_at_its_budget(handlers, artifacts):
    built = with_live_state(build(handlers, artifacts), FakeStore(delay_s=2.0), budget_ms=5.0)
    response = built.recommend()
    live = report(response, "live_state")
    assert (live.status, live.cause) == (DEGRADED, Cause.DEGRADATION_CAUSE_DEADLINE)
    assert live.latency_ms < 500 and len(response.items) == 10
