"""A late, failing or missing stage degrades the answer within budget and never skips content policy."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from funnel.artifacts.catalog import COUNTRIES, Catalog
from funnel.policy.document import load_policy
from funnel.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from tests.conftest import POLICY
from tests.fakes import Fault, closed_address, elapsed_ms, faulty_ranking, faulty_reranking, fixed_retrieval

DEGRADED = common_pb2.STAGE_STATUS_DEGRADED
OK = common_pb2.STAGE_STATUS_OK
DEADLINE = common_pb2.DEGRADATION_CAUSE_DEADLINE
UNAVAILABLE = common_pb2.DEGRADATION_CAUSE_UNAVAILABLE
MARGIN_MS = 150  # scheduling slack on a shared 2-core machine


def recommend(address: str, request: recommender_pb2.RecommendRequest, timeout: float | None = 5.0):
    with grpc.insecure_channel(address) as channel:
        started = time.perf_counter()
        response = recommender_pb2_grpc.RecommenderStub(channel).Recommend(request, timeout=timeout)
        return response, elapsed_ms(started)


def stage(response, name: str):
    return next(s for s in response.stages if s.stage == name)


def shards(stack) -> str:
    return f"{stack.address('retrieval-0-0')};{stack.address('retrieval-1-0')}"


def unsafe_and_clean_items(catalog: Catalog) -> tuple[list[str], list[str]]:
    """Items content policy must remove for a US user with the default ceiling, and clean ones."""
    policy = load_policy(POLICY).content
    us = 1 << COUNTRIES.index("US")
    blocked_provider = np.isin(np.array(catalog.provider_names)[catalog.provider], sorted(policy.blocked_providers))
    blocked_item = np.isin(catalog.item_ids, sorted(policy.blocked_item_ids))
    too_mature = catalog.maturity > policy.default_max_maturity
    not_in_us = (catalog.region_mask != -1) & ((catalog.region_mask & us) == 0)
    clean = ~(blocked_provider | blocked_item | too_mature | not_in_us)
    unsafe = [
        *catalog.item_ids[blocked_item][:2],
        catalog.item_ids[blocked_provider & ~blocked_item][0],
        catalog.item_ids[too_mature & clean.__invert__()][0],
        catalog.item_ids[not_in_us][0],
    ]
    return [str(i) for i in unsafe], [str(i) for i in catalog.item_ids[clean][:12]]


def test_hung_reranking_never_lets_unfiltered_items_through(stack, catalog, start_gateway):
    unsafe, clean = unsafe_and_clean_items(catalog)
    excluded = clean[0]
    hang = Fault(delay_s=30)
    with fixed_retrieval(unsafe + clean) as retrieval, faulty_reranking(hang) as reranking:
        gateway = start_gateway(retrieval, stack.address("ranking-0"), reranking, "--reranking-budget-ms", "10000")
        request = recommender_pb2.RecommendRequest(
            user_id="u0000001", num_results=20, exclude_item_ids=[excluded], context=common_pb2.Context(country="US")
        )
        response, took = recommend(gateway.address, request, timeout=0.4)
    assert hang.calls == 1, "the gateway did call re-ranking"
    returned = {item.item_id for item in response.items}
    assert returned, "the safety net still answers"
    assert returned <= set(clean) - {excluded}
    assert not returned & set(unsafe)
    report = stage(response, "reranking")
    assert (report.status, report.cause) == (DEGRADED, DEADLINE)
    assert report.version.startswith("policy:"), "the gateway's own content policy answered"
    assert response.degraded
    assert took < 400 + MARGIN_MS, "the answer arrives within the client's deadline"


def test_slow_ranking_is_cut_off_and_retrieval_order_is_kept(stack, start_gateway):
    slow = Fault(delay_s=5)
    with faulty_ranking(slow) as ranking:
        gateway = start_gateway(shards(stack), ranking, stack.address("reranking-0"), "--default-deadline-ms", "300")
        response, took = recommend(
            gateway.address, recommender_pb2.RecommendRequest(user_id="u0000002", num_results=10), None
        )
        slow.release()
    report = stage(response, "ranking")
    assert (report.status, report.cause) == (DEGRADED, DEADLINE)
    assert stage(response, "retrieval").status == OK and stage(response, "reranking").status == OK
    assert len(response.items) == 10 and response.degraded
    assert took < 300 + MARGIN_MS, "total budget (the configured default) plus a small margin"


@pytest.mark.parametrize("down", ["failing", "absent"])
def test_ranking_failure_degrades_quickly(stack, start_gateway, down):
    failing = Fault(code=grpc.StatusCode.UNAVAILABLE)
    with faulty_ranking(failing) as ranking:
        target = ranking if down == "failing" else closed_address()
        gateway = start_gateway(shards(stack), target, stack.address("reranking-0"))
        response, took = recommend(gateway.address, recommender_pb2.RecommendRequest(user_id="u0000003", num_results=5))
    report = stage(response, "ranking")
    assert (report.status, report.cause) == (DEGRADED, UNAVAILABLE)
    assert len(response.items) == 5
    assert took < 250 + MARGIN_MS


def test_every_shard_down_serves_the_gateways_filtered_popular_fallback(stack, catalog, start_gateway):
    unsafe, _ = unsafe_and_clean_items(catalog)
    with faulty_reranking(Fault(delay_s=30)) as reranking:
        gateway = start_gateway(f"{closed_address()};{closed_address()}", stack.address("ranking-0"), reranking)
        request = recommender_pb2.RecommendRequest(
            user_id="u0000004", num_results=10, context=common_pb2.Context(country="US")
        )
        response, _ = recommend(gateway.address, request)
    retrieval = stage(response, "retrieval")
    assert (retrieval.status, retrieval.cause) == (DEGRADED, UNAVAILABLE)
    assert {item.source for item in response.items} == {"fallback_popular"}
    assert len(response.items) == 10
    assert not {item.item_id for item in response.items} & set(unsafe)
    policy = load_policy(POLICY).content
    for item in response.items:
        row = catalog.index.row(item.item_id)
        assert catalog.maturity[row] <= policy.default_max_maturity
        assert catalog.provider_names[catalog.provider[row]] not in policy.blocked_providers


def test_one_shard_down_gives_a_partial_answer_marked_degraded(stack, start_gateway):
    gateway = start_gateway(
        f"{stack.address('retrieval-0-0')};{closed_address()}", stack.address("ranking-0"), stack.address("reranking-0")
    )
    response, _ = recommend(gateway.address, recommender_pb2.RecommendRequest(user_id="u0000005", num_results=5))
    retrieval = stage(response, "retrieval")
    assert (retrieval.status, retrieval.cause) == (DEGRADED, common_pb2.DEGRADATION_CAUSE_PARTIAL)
    assert retrieval.message.startswith("partial: shard 1"), "the message names the shard"
    assert len(response.items) == 5 and response.degraded
