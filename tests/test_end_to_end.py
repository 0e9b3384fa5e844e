"""The whole funnel through the public API, against real processes: Triton, shards, stages, gateway."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from funnel.artifacts.catalog import COUNTRIES, Catalog
from funnel.policy.document import load_policy
from funnel.sources import RETRIEVAL_SOURCES
from funnel.v1 import common_pb2, recommender_pb2
from launcher.health import health_status
from tests.conftest import POLICY

OK = common_pb2.STAGE_STATUS_OK
Request = recommender_pb2.RecommendRequest


def test_recommend_returns_requested_count_with_every_stage_ok_and_versions(gateway, stack):
    response = gateway.Recommend(Request(user_id="u0000003", num_results=10), timeout=5)
    assert len(response.items) == 10
    assert len({item.item_id for item in response.items}) == 10
    assert [s.stage for s in response.stages] == ["retrieval", "ranking", "reranking", "live_state"]
    assert all(s.status == OK for s in response.stages), response.stages
    assert not response.degraded
    assert response.request_id
    retrieval, ranking, reranking, live = response.stages
    assert retrieval.version.endswith("-tiny-eval") and retrieval.items_out > 10
    assert ranking.version == "ranker:1" and ranking.items_in == retrieval.items_out
    assert reranking.version == f"policy:{load_policy(POLICY).version}" and reranking.items_out == 10
    assert {item.source for item in response.items} <= set(RETRIEVAL_SOURCES)
    for stage in (retrieval, ranking, reranking):  # the stage server's own time is part of what the gateway waited
        assert 0 < stage.server_ms < stage.latency_ms, stage
    assert live.latency_ms > 0 and live.server_ms == 0, "Redis reports no time of its own"


def test_known_user_gets_personal_ann_candidates(gateway):
    response = gateway.Recommend(Request(user_id="u0000005", num_results=50), timeout=5)
    assert any(item.source == "ann" for item in response.items)


def test_cold_user_gets_candidates_not_an_error(gateway):
    response = gateway.Recommend(Request(user_id="someone-new", num_results=5), timeout=5)
    assert len(response.items) == 5
    assert not response.degraded


def test_session_items_personalise_retrieval_for_a_user_the_model_never_saw(stack, catalog):
    from funnel.sources import SOURCE_CODES
    from funnel.v2 import retrieval_pb2, retrieval_pb2_grpc

    category = int(np.bincount(catalog.category).argmax())
    session = [str(i) for i in catalog.item_ids[catalog.category == category][:8]]

    def share_of_category(recent: list[str]) -> float:
        with grpc.insecure_channel(stack.address("retrieval-0-0")) as channel:
            reply = retrieval_pb2_grpc.RetrievalStub(channel).Retrieve(
                retrieval_pb2.RetrieveRequest(
                    user_id="brand-new", num_candidates=50, sources=[SOURCE_CODES["ann"]], recent_item_ids=recent
                ),
                timeout=5,
            )
        assert not reply.known_user
        rows = catalog.index.rows(list(reply.candidates.item_ids))
        return float(np.mean(catalog.category[rows] == category))

    assert share_of_category(session) > share_of_category([]) + 0.2


def test_answers_obey_content_policy_exclusions_maturity_and_region(gateway, catalog: Catalog):
    policy = load_policy(POLICY).content
    first = gateway.Recommend(Request(user_id="u0000007", num_results=20), timeout=5)
    excluded = [item.item_id for item in first.items[:5]]
    context = common_pb2.Context(country="JP", max_maturity=common_pb2.MATURITY_RATING_PG)
    response = gateway.Recommend(
        Request(user_id="u0000007", num_results=20, exclude_item_ids=excluded, context=context), timeout=5
    )
    assert response.items
    jp = 1 << COUNTRIES.index("JP")
    for item in response.items:
        row = catalog.index.row(item.item_id)
        assert item.item_id not in excluded
        assert item.item_id not in policy.blocked_item_ids
        assert catalog.provider_names[catalog.provider[row]] not in policy.blocked_providers
        assert catalog.maturity[row] <= common_pb2.MATURITY_RATING_PG
        assert catalog.region_mask[row] == -1 or catalog.region_mask[row] & jp


def test_debug_attaches_reasons_and_plain_requests_do_not(gateway):
    plain = gateway.Recommend(Request(user_id="u0000002", num_results=3), timeout=5)
    debug = gateway.Recommend(Request(user_id="u0000002", num_results=3, debug=True), timeout=5)
    assert all(not item.reasons for item in plain.items)
    assert all(item.reasons for item in debug.items)
    assert any("ranking score" in reason for reason in debug.items[0].reasons)
    counted = {rule.rule for rule in debug.stages[2].rules}
    assert {"content_policy", "exclude_requested", "mmr", "category_cap", "truncate"} <= counted
    assert not plain.stages[2].rules, "rule counts come with debug only"


def test_client_request_id_is_returned_and_propagated_to_every_stage(gateway, stack):
    request_id = f"test-{time.time_ns()}"
    response = gateway.Recommend(
        Request(user_id="u0000004", num_results=3), timeout=5, metadata=(("x-request-id", request_id),)
    )
    assert response.request_id == request_id
    for name in ("gateway", "retrieval-0-0", "retrieval-1-0", "ranking-0", "reranking-0"):
        assert _logged_request_ids(stack, name).count(request_id) >= 1, f"{name} never saw {request_id}"


def _logged_request_ids(stack, name: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:  # access-log lines are flushed right after the call; allow for scheduling
        lines = Path(stack.get(name).log).read_text().splitlines()
        ids = [json.loads(line).get("request_id", "") for line in lines if line.startswith("{")]
        if ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"user_id": "", "num_results": 5}, "user_id must not be empty"),
        ({"user_id": "u1", "num_results": 0}, "num_results must be > 0"),
        ({"user_id": "u1", "num_results": -3}, "num_results must be > 0"),
        ({"user_id": "u1", "num_results": 100_000}, "num_results must be <="),
        ({"user_id": "x" * 500, "num_results": 5}, "longer than"),
        ({"user_id": "u1", "num_results": 5, "context": common_pb2.Context(country="usa")}, "country"),
        ({"user_id": "u1", "num_results": 5, "context": common_pb2.Context(device="Smart TV!")}, "device"),
        ({"user_id": "u1", "num_results": 5, "context": common_pb2.Context(max_maturity=42)}, "max_maturity"),
        (
            {
                "user_id": "u1",
                "num_results": 5,
                "context": common_pb2.Context(timestamp=timestamp_pb2.Timestamp(seconds=4_000_000_000)),
            },
            "timestamp",
        ),
        ({"user_id": "u1", "num_results": 5, "exclude_item_ids": ["i1"] * 5000}, "exclude_item_ids"),
        ({"user_id": "u1", "num_results": 5, "exclude_item_ids": [""]}, "must not be empty"),
    ],
)
def test_bad_input_gets_invalid_argument_with_a_message(gateway, request_fields, message):
    with pytest.raises(grpc.RpcError) as error:
        gateway.Recommend(Request(**request_fields), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_every_process_reports_serving_and_lists_its_services_by_reflection(stack):
    expected = {
        "gateway": "funnel.v1.Recommender",
        "retrieval-0-0": "funnel.v2.Retrieval",
        "retrieval-1-0": "funnel.v2.Retrieval",
        "ranking-0": "funnel.v2.Ranking",
        "reranking-0": "funnel.v2.Reranking",
    }
    for name, service in expected.items():
        address = stack.address(name)
        assert health_status(address) == "SERVING"
        assert health_status(address, service) == "SERVING"
        with grpc.insecure_channel(address) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {service, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_gateway_metrics_count_stage_latencies_after_traffic(gateway, stack):
    gateway.Recommend(Request(user_id="u0000001", num_results=3), timeout=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.get('gateway').metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for stage in ("retrieval", "ranking", "reranking"):
        line = next(
            line
            for line in text.splitlines()
            if line.startswith("funnel_stage_latency_seconds_count")
            and f'stage="{stage}"' in line
            and 'outcome="ok"' in line
        )
        assert float(line.split()[-1]) > 0

    def scrape(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.read().decode()

    # Versions as info metrics; Triton's own metrics on its metrics port.
    ranking = scrape(stack.get("ranking-0").metrics_port)
    assert 'funnel_artifact_info{kind="model",version="1"} 1.0' in ranking
    assert 'funnel_artifact_info{kind="bundle",version=' in ranking
    triton = scrape(stack.triton.metrics_port)
    served = next(
        line
        for line in triton.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="ranker"' in line
    )
    assert float(served.split()[-1]) > 0


def test_logs_are_json_lines_carrying_the_request_id(gateway, stack):
    request_id = f"log-{time.time_ns()}"
    with pytest.raises(grpc.RpcError):
        gateway.Recommend(Request(user_id="", num_results=1), timeout=5, metadata=(("x-request-id", request_id),))
    lines = Path(stack.get("gateway").log).read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert any(entry.get("request_id") == request_id and entry["service"] == "gateway" for entry in entries)
