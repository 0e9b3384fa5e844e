"""Gateway logic that needs no server: shard merging, budgets, address parsing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from funnel.candidates import Candidates
from funnel.retrieval.merge import merge_candidates
from funnel.runtime.channels import grpc_target
from funnel.runtime.deadline import Budget, budget_from_grpc
from funnel.sources import SOURCE_CODES, SOURCE_NAMES


def shard_response(pairs, source="ann"):
    codes = np.full(len(pairs), SOURCE_CODES[source], dtype=np.int32)
    return Candidates([i for i, _ in pairs], codes, np.array([s for _, s in pairs], dtype=np.float32))


def test_merged_shards_equal_one_index_over_all_items():
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    ids = [f"i{n}" for n in range(300)]
    shards = [[], [], []]
    for n in range(300):
        shards[n % 3].append((ids[n], float(scores[n])))
    # each shard returns its own top 50, best first, as a shard would
    responses = [shard_response(sorted(s, key=lambda p: -p[1])[:50]) for s in shards]
    merged = merge_candidates(responses, {"ann": 50})
    expected = [ids[n] for n in np.argsort(-scores.astype(np.float32), kind="stable")[:50]]
    assert merged.item_ids == expected


def test_merge_cuts_each_source_by_its_own_score_then_fuses_them_by_rank():
    ann = shard_response([("a", 0.9), ("b", 0.8)])
    popular = shard_response([("b", 5.0), ("c", 4.0), ("d", 3.0)], source="popular")
    fresh = shard_response([("e", 0.99), ("c", 0.5)], source="fresh")
    merged = merge_candidates([fresh, ann, popular], {"ann": 10, "popular": 2, "fresh": 2})
    # "d" is third of popular, beyond its limit; "b", found by two sources, rises above "a"; each
    # candidate names the source that ranked it best.
    sources = [SOURCE_NAMES[code] for code in merged.sources.tolist()]
    assert list(zip(merged.item_ids, sources, strict=True)) == [
        ("b", "ann"), ("a", "ann"), ("c", "popular"), ("e", "fresh")
    ]  # fmt: skip
    scores = merged.retrieval_scores.tolist()
    assert scores == sorted(scores, reverse=True)


def test_stage_timeout_is_capped_by_what_remains_minus_the_reserve():
    budget = Budget(total_s=0.100)
    assert budget.stage_timeout(0.050, reserve_s=0.005) == pytest.approx(0.050, abs=0.002)
    assert budget.stage_timeout(0.500, reserve_s=0.005) == pytest.approx(0.095, abs=0.005)
    late = Budget(total_s=0.010, started=time.monotonic() - 1.0)
    assert late.remaining() == 0.0
    assert late.stage_timeout(0.050) == 0.0


def test_total_budget_is_the_client_deadline_or_the_default():
    assert budget_from_grpc(None, 0.25).total_s == 0.25
    assert budget_from_grpc(0.08, 0.25).total_s == 0.08


@pytest.mark.parametrize(
    ("spec", "target"),
    [
        ("127.0.0.1:50061", "127.0.0.1:50061"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("dns:///retrieval-0.funnel.svc:50061", "dns:///retrieval-0.funnel.svc:50061"),
    ],
)
def test_address_specs_become_balanced_grpc_targets(spec, target):
    assert grpc_target(spec) == target
