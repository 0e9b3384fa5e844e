"""Content policy and re-ranking rules as plain Python, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from funnel.artifacts.catalog import COUNTRIES, Catalog, IdIndex, Users
from funnel.policy.content import ContentFilter
from funnel.policy.document import ContentRules, PolicyError, parse_policy
from funnel.policy.engine import PolicyEngine
from funnel.v1 import common_pb2

US, DE = 1 << COUNTRIES.index("US"), 1 << COUNTRIES.index("DE")
VECTORS = np.eye(8, dtype=np.float32)  # every item orthogonal to every other


@pytest.fixture
def small_catalog() -> Catalog:
    #            i0  i1  i2  i3  i4  i5  i6  i7
    return Catalog(
        item_ids=np.array([f"i{n}" for n in range(8)]),
        category=np.array([0, 0, 0, 0, 1, 1, 2, 2], dtype=np.int32),
        provider=np.array([0, 1, 1, 1, 2, 2, 2, 0], dtype=np.int32),
        maturity=np.array([1, 1, 2, 5, 3, 4, 1, 1], dtype=np.int8),
        region_mask=np.array([-1, -1, -1, -1, US, DE, -1, -1], dtype=np.int64),
        age_days=np.zeros(8, dtype=np.float32),
        popularity=np.arange(8, dtype=np.float32),
        category_names=["c0", "c1", "c2"],
        provider_names=["p0", "p1", "p2"],
    )


@pytest.fixture
def users() -> Users:
    # user "u0" has consumed i6
    return Users(
        user_ids=np.array(["u0"]),
        history_indptr=np.array([0, 1], dtype=np.int64),
        history_items=np.array([6], dtype=np.int32),
        history_times=np.array([1_700_000_000], dtype=np.int64),
        country=np.zeros(1, np.int8),
    )


def test_id_index_finds_rows_and_flags_unknown_ids():
    index = IdIndex(np.array(["b", "a", "c"]))
    assert index.rows(["c", "a", "zz", "b", "aa"]).tolist() == [2, 1, -1, 0, -1]
    assert index.rows([]).tolist() == []


def test_content_filter_removes_blocked_mature_and_unavailable_items_with_reasons(small_catalog):
    rules = ContentRules(
        blocked_item_ids=frozenset({"i1"}), blocked_providers=frozenset({"p0"}), default_max_maturity=3
    )
    result = ContentFilter(small_catalog, rules).apply(np.arange(8), common_pb2.Context(country="US"))
    assert result.keep.tolist() == [False, False, True, False, True, False, True, False]
    assert result.reasons == {
        0: "blocked provider",
        1: "blocked item",
        3: "maturity above the allowed rating",
        5: "maturity above the allowed rating",
        7: "blocked provider",
    }


def test_content_filter_uses_the_request_ceiling_and_treats_unknown_regions_strictly(small_catalog):
    content = ContentFilter(small_catalog, ContentRules())
    strict = content.apply(np.arange(8), common_pb2.Context(max_maturity=common_pb2.MATURITY_RATING_G))
    assert np.flatnonzero(strict.keep).tolist() == [0, 1, 6, 7]
    nowhere = content.apply(np.array([4, 5, -1]), common_pb2.Context(max_maturity=common_pb2.MATURITY_RATING_NC17))
    assert nowhere.keep.tolist() == [False, False, False]
    assert nowhere.reasons[2] == "unknown item"


def test_engine_applies_policy_exclusions_consumed_dedupe_and_category_cap(small_catalog, users):
    policy = parse_policy(
        """
        version: t1
        content: {blocked_providers: [p1], default_max_maturity: NC17}
        rules:
          - name: exclude_consumed
          - name: dedupe
          - name: category_cap
            max_per_category: 1
        """
    )
    engine = PolicyEngine(small_catalog, users, VECTORS, policy)
    ids = ["i0", "i0", "i2", "i4", "i5", "i6", "i7", "i3"]
    scores = np.array([9, 8, 7, 6, 5, 4, 3, 2], dtype=np.float32)
    result = engine.run("u0", ids, scores, common_pb2.Context(country="DE"), {"i7"}, num_results=10)
    assert [ids[p] for p in result.positions] == ["i0", "i5"]
    reports = dict(result.reports)
    assert reports["content_policy"].removed == 3  # i2, i3 (blocked provider p1), i4 (not in DE)
    assert reports["exclude_requested"].removed == 1  # i7
    assert reports["exclude_consumed"].removed == 1  # i6
    assert reports["dedupe"].removed == 1  # the second i0
    assert reports["category_cap"].removed == 0
    assert result.slate.removed[7] == "content_policy: blocked provider"


def test_no_rules_keeps_ranking_order_and_truncates(small_catalog, users):
    engine = PolicyEngine(
        small_catalog, users, VECTORS, parse_policy("version: empty\ncontent: {default_max_maturity: NC17}")
    )
    ids = ["i6", "i0", "i1", "i7"]
    result = engine.run("u0", ids, np.array([4, 3, 2, 1], dtype=np.float32), common_pb2.Context(), set(), num_results=3)
    assert [ids[p] for p in result.positions] == ["i6", "i0", "i1"]
    assert dict(result.reports)["truncate"].removed == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nrules:\n  - name: no_such_rule\n", "unknown rule 'no_such_rule'"),
        (
            "version: 1\nrules:\n  - name: category_cap\n    max_per_category: 0\n",
            "max_per_category must be an integer >= 1",
        ),
        ("version: 1\nrules:\n  - name: dedupe\n    threshold: 2\n", "rule dedupe: unknown parameters ['threshold']"),
        ("version: 1\nrules:\n  - name: dedupe\n  - name: dedupe\n", "rules listed more than once: ['dedupe']"),
        (
            "version: 1\nrules:\n  - name: category_cap\n    max_per_category: 3\n    window: 2\n",
            "window must be larger",
        ),
        ("version: 1\nrules:\n  - name: mmr\n    lambda: 1.5\n", "lambda must be in [0, 1]"),
        ("version: 1\nrules:\n  - name: pin\n    items: {i1: 1, i2: 1}\n", "two items pinned at the same position"),
        (
            "version: 1\ncontent: {blocked_item_ids: [i1]}\nrules:\n  - name: pin\n    items: {i1: 1}\n",
            "contradictory settings: pin places content the policy blocks: ['i1']",
        ),
        ("version: 1\nrules:\n  - name: provider_cap\n    max_share: true\n", "max_share has the wrong type"),
        ("version: 1\ncontent: {default_max_maturity: X}\n", "unknown maturity rating 'X'"),
        ("version: 1\ncontent: {blocked_items: [a]}\n", "unknown content keys ['blocked_items']"),
        ("rules: []\n", "'version' is required"),
        ("version: 1\nrules: [\n", "not valid YAML"),
    ],
)
def test_malformed_policies_are_rejected_with_the_offending_entry_named(small_catalog, users, text, message):
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PolicyEngine(small_catalog, users, VECTORS, parse_policy(text))
