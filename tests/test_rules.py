"""Each re-ranking rule on a small hand-made catalog, and policy hot reload in the service."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.document import parse_policy
from funnel.policy.engine import PolicyEngine
from funnel.v1 import common_pb2
from funnel.v2 import candidates_pb2, reranking_pb2, reranking_pb2_grpc
from tests.conftest import POLICY

EVERYWHERE = common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_NC17)


@pytest.fixture
def catalog() -> Catalog:
    size = 10
    return Catalog(
        item_ids=np.array([f"i{n}" for n in range(size)]),
        category=np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3], dtype=np.int32),
        provider=np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3], dtype=np.int32),
        maturity=np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 5], dtype=np.int8),
        region_mask=np.full(size, -1, dtype=np.int64),
        age_days=np.array([1000, 0, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000], dtype=np.float32),
        popularity=np.ones(size, dtype=np.float32),
        category_names=["c0", "c1", "c2", "c3"],
        provider_names=["p0", "p1", "p2", "p3"],
    )


@pytest.fixture
def users() -> Users:
    return Users(np.array(["u0"]), np.array([0, 0]), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(1, np.int8))


def vectors_with_twins() -> np.ndarray:
    """i0 and i1 are near copies; every other item points its own way."""
    vectors = np.eye(10, dtype=np.float32)
    vectors[1] = vectors[0] * 0.995 + vectors[1] * 0.0999
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rerank(catalog, users, rules: str, ids, scores, n=10, vectors=None, context=EVERYWHERE):
    policy = parse_policy(f"version: t\ncontent: {{default_max_maturity: NC17}}\nrules:\n{rules}")
    engine = PolicyEngine(catalog, users, vectors if vectors is not None else np.eye(10, dtype=np.float32), policy)
    result = engine.run("u0", ids, np.asarray(scores, dtype=np.float32), context, set(), n, debug=True)
    return [str(result.slate.item_ids[p]) for p in result.positions], result


def test_freshness_boost_lifts_a_new_item_over_a_slightly_better_old_one(catalog, users):
    out, result = rerank(catalog, users, "  - name: freshness_boost\n    weight: 0.1", ["i0", "i1"], [0.50, 0.45])
    assert out == ["i1", "i0"]
    assert dict(result.reports)["freshness_boost"].moved == 2
    assert any("freshness_boost +0.1" in note for note in result.slate.notes[1])


def test_business_boost_promotes_named_items_and_providers(catalog, users):
    rules = "  - name: business_boost\n    items: {i4: 0.3}\n    providers: {p3: 0.2}"
    out, _ = rerank(catalog, users, rules, ["i0", "i4", "i7"], [0.9, 0.7, 0.75])
    assert out == ["i4", "i7", "i0"]


def test_near_duplicates_are_dropped_with_a_reason_only_above_the_threshold(catalog, users):
    twins = vectors_with_twins()
    out, result = rerank(
        catalog,
        users,
        "  - name: dedupe\n    near_duplicate_cosine: 0.98",
        ["i0", "i1", "i2"],
        [3, 2, 1],
        vectors=twins,
    )
    assert out == ["i0", "i2"]
    assert result.slate.removed[1] == "dedupe: near duplicate (cosine > 0.98)"
    kept, _ = rerank(
        catalog, users, "  - name: dedupe\n    near_duplicate_cosine: 0.999", ["i0", "i1"], [2, 1], vectors=twins
    )
    assert kept == ["i0", "i1"]


def test_mmr_trades_relevance_for_variety_by_lambda(catalog, users):
    twins = vectors_with_twins()
    ids, scores = ["i0", "i1", "i2", "i3"], [1.0, 0.99, 0.5, 0.4]
    diverse, result = rerank(catalog, users, "  - name: mmr\n    lambda: 0.3", ids, scores, vectors=twins)
    assert diverse[:2] == ["i0", "i2"], "the near copy of the first item waits"
    assert dict(result.reports)["mmr"].moved > 0
    relevant, _ = rerank(catalog, users, "  - name: mmr\n    lambda: 1.0", ids, scores, vectors=twins)
    assert relevant == ids


def test_category_cap_holds_in_every_window(catalog, users):
    ids = ["i0", "i1", "i2", "i3", "i4", "i6"]  # four of category 0 first
    out, result = rerank(
        catalog, users, "  - name: category_cap\n    max_per_category: 1\n    window: 2", ids, [6, 5, 4, 3, 2, 1]
    )
    categories = catalog.category[catalog.index.rows(out)].tolist()
    assert all(a != b for a, b in itertools.pairwise(categories))
    assert out[:4] == ["i0", "i4", "i1", "i6"]
    assert dict(result.reports)["category_cap"].moved > 0


def test_provider_cap_and_small_provider_quota_shape_the_top_n(catalog, users):
    ids = ["i0", "i1", "i2", "i3", "i5", "i7"]
    capped, _ = rerank(catalog, users, "  - name: provider_cap\n    max_share: 0.5", ids, [6, 5, 4, 3, 2, 1], n=4)
    assert capped == ["i0", "i1", "i3", "i5"], "p0 holds at most 2 of 4"
    quota = "  - name: provider_min_share\n    min_share: 0.5\n    max_catalog_items: 2"  # p1, p2 are small
    shared, _ = rerank(catalog, users, quota, ["i0", "i1", "i2", "i7", "i3", "i5"], [6, 5, 4, 3, 2, 1], n=4)
    assert shared == ["i0", "i1", "i3", "i5"]


def test_a_windowed_quota_gives_small_providers_a_place_in_every_block_not_only_at_the_end(catalog, users):
    ids, scores = ["i0", "i1", "i2", "i7", "i3", "i5"], [6, 5, 4, 3, 2, 1]  # p1 and p2 are small, and last
    quota = "  - name: provider_min_share\n    min_share: 0.5\n    max_catalog_items: 2"
    whole_list, _ = rerank(catalog, users, quota, ids, scores, n=4)
    assert whole_list == ["i0", "i1", "i3", "i5"], "over the whole list, the small providers come last"
    every_two, result = rerank(catalog, users, quota + "\n    window: 2", ids, scores, n=4)
    assert every_two == ["i0", "i3", "i1", "i5"], "one small provider in each block of two"
    assert dict(result.reports)["provider_min_share"].moved > 0
    out_of_smalls, _ = rerank(catalog, users, quota + "\n    window: 2", ["i0", "i1", "i3", "i2"], [4, 3, 2, 1], n=4)
    assert out_of_smalls == ["i0", "i3", "i1", "i2"], "when no small provider is left, the block fills anyway"


def test_new_providers_count_for_the_quota_too(catalog, users):
    young = dataclasses.replace(catalog, age_days=np.where(catalog.provider == 3, 5.0, 1000.0).astype(np.float32))
    quota = "  - name: provider_min_share\n    min_share: 0.5\n    max_catalog_items: 0\n    new_within_days: 30"
    out, _ = rerank(young, users, quota, ["i0", "i1", "i2", "i3", "i7", "i8"], [6, 5, 4, 3, 2, 1], n=4)
    assert out == ["i0", "i1", "i7", "i8"], "p3's items are all new: two of four slots"


def test_pins_place_items_even_unretrieved_ones_but_never_unsafe_ones(catalog, users):
    out, result = rerank(catalog, users, "  - name: pin\n    items: {i8: 2}", ["i0", "i1", "i2"], [3, 2, 1])
    assert out == ["i0", "i8", "i1", "i2"]
    assert "pin: placed at 2" in result.slate.notes[3]
    teen = common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_PG13)
    safe, _ = rerank(catalog, users, "  - name: pin\n    items: {i9: 1}", ["i0", "i1"], [2, 1], context=teen)
    assert safe == ["i0", "i1"], "i9 is NC17: content policy outranks a pin"


def test_policy_hot_reload_under_concurrent_requests_rejects_a_malformed_file(artifacts, start_service, tmp_path):
    policy = tmp_path / "policy.yaml"
    shutil.copy(POLICY, policy)
    service = start_service(
        "services.reranking",
        ["--artifact-dir", str(artifacts), "--policy-path", str(policy), "--policy-poll-seconds", "0.2"],
        metrics=True,
    )
    metrics_port = service.metrics_port
    request = reranking_pb2.RerankRequest(
        user_id="u0000001",
        num_results=10,
        candidates=candidates_pb2.CandidateList(
            item_ids=[f"i{n:07d}" for n in range(10, 300)], ranking_scores=[1 - n / 500 for n in range(10, 300)]
        ),
    )
    versions: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with grpc.insecure_channel(service.address) as channel:
            stub = reranking_pb2_grpc.RerankingStub(channel)
            while not stop.is_set():
                try:
                    versions.append(stub.Rerank(request, timeout=5).policy_version)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 15
        while (not versions or versions[-1] != version) and time.monotonic() < deadline:
            time.sleep(0.05)

    served = parse_policy(POLICY.read_text()).version
    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        policy.write_text(POLICY.read_text().replace(f'version: "{served}"', 'version: "next"'))
        wait_for("next")
        policy.write_text('version: "broken"\nrules:\n  - name: category_cap\n    max_per_category: 0\n')
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert versions[0] == served and "next" in versions
    assert versions[-1] == "next", "the malformed file was rejected and the last good policy kept serving"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    assert 'funnel_policy_reloads_total{result="rejected"} 1.0' in text
    assert 'funnel_policy_reloads_total{result="loaded"} 1.0' in text
    assert "policy rejected" in service.log.read_text()
