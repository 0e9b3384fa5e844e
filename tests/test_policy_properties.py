"""Property tests of the policy engine over random catalogs, candidate lists and policies."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funnel.artifacts.catalog import COUNTRIES, Catalog, Users
from funnel.policy.content import ContentFilter
from funnel.policy.document import parse_policy
from funnel.policy.engine import PolicyEngine
from funnel.v1 import common_pb2

PROVIDERS = [f"p{n}" for n in range(6)]


@st.composite
def worlds(draw):
    size = draw(st.integers(5, 40))
    catalog = Catalog(
        item_ids=np.array([f"i{n}" for n in range(size)]),
        category=np.array(draw(st.lists(st.integers(0, 3), min_size=size, max_size=size)), dtype=np.int32),
        provider=np.array(draw(st.lists(st.integers(0, 5), min_size=size, max_size=size)), dtype=np.int32),
        maturity=np.array(draw(st.lists(st.integers(1, 5), min_size=size, max_size=size)), dtype=np.int8),
        region_mask=np.array(
            draw(st.lists(st.sampled_from([-1, 1, 3, 6]), min_size=size, max_size=size)), dtype=np.int64
        ),
        age_days=np.array(draw(st.lists(st.floats(0, 1000), min_size=size, max_size=size)), dtype=np.float32),
        popularity=np.ones(size, dtype=np.float32),
        category_names=["c0", "c1", "c2", "c3"],
        provider_names=PROVIDERS,
    )
    vectors = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal((size, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    consumed = draw(st.lists(st.integers(0, size - 1), max_size=3))
    users = Users(
        np.array(["u0"]), np.array([0, len(consumed)], dtype=np.int64), np.array(consumed, dtype=np.int32),
        np.zeros(len(consumed), np.int64), np.zeros(1, np.int8),
    )  # fmt: skip
    candidates = draw(st.lists(st.integers(0, size - 1), min_size=0, max_size=60))
    scores = draw(st.lists(st.floats(0, 1, width=32), min_size=len(candidates), max_size=len(candidates)))
    return catalog, users, vectors, [f"i{c}" for c in candidates], np.array(scores, dtype=np.float32)


@st.composite
def policies(draw):
    rules = []
    if draw(st.booleans()):
        rules.append("  - name: exclude_consumed")
    if draw(st.booleans()):
        rules.append("  - name: dedupe")
    if draw(st.booleans()):
        rules.append(f"  - name: freshness_boost\n    weight: {draw(st.floats(0, 1)):.3f}")
    if draw(st.booleans()):
        rules.append(f"  - name: mmr\n    lambda: {draw(st.floats(0, 1)):.3f}")
    cap = window = None
    if draw(st.booleans()):
        cap = draw(st.integers(1, 3))
        window = draw(st.one_of(st.none(), st.integers(cap + 1, cap + 4)))
        rules.append(
            f"  - name: category_cap\n    max_per_category: {cap}" + (f"\n    window: {window}" if window else "")
        )
    share = None
    if draw(st.booleans()):
        share = draw(st.sampled_from([0.2, 0.34, 0.5, 1.0]))
        rules.append(f"  - name: provider_cap\n    max_share: {share}")
    if draw(st.booleans()):
        rules.append("  - name: provider_min_share\n    min_share: 0.2\n    max_catalog_items: 3")
    draw(st.randoms()).shuffle(rules)  # the listed order must not matter
    blocked = draw(st.lists(st.sampled_from(PROVIDERS[:3]), max_size=2, unique=True))
    text = f"version: t\ncontent: {{blocked_providers: {blocked}, blocked_item_ids: [i0]}}\nrules:\n" + "\n".join(rules)
    return parse_policy(text if rules else text.replace("rules:\n", "rules: []")), cap, window, share


def run(world, policy, num_results, exclude, context):
    catalog, users, vectors, ids, scores = world
    engine = PolicyEngine(catalog, users, vectors, policy)
    result = engine.run("u0", ids, scores, context, exclude, num_results)
    return [str(result.slate.item_ids[p]) for p in result.positions], engine


CONTEXTS = st.builds(
    common_pb2.Context,
    country=st.sampled_from(["", *COUNTRIES[:3]]),
    max_maturity=st.integers(0, 5),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(), policies(), st.integers(1, 15), st.sets(st.sampled_from([f"i{n}" for n in range(10)])), CONTEXTS)
def test_every_answer_is_a_safe_subset_that_keeps_the_caps(world, policy_and_caps, num_results, exclude, context):
    policy, cap, window, share = policy_and_caps
    catalog, users, _, ids, _ = world
    out, engine = run(world, policy, num_results, exclude, context)

    assert set(out) <= set(ids), "output is a subset of the input"
    if "dedupe" in [r.name for r in engine.rules]:
        assert len(out) == len(set(out)), "dedupe leaves one entry per item"
    assert len(out) <= num_results
    rows = catalog.index.rows(out)
    verdict = ContentFilter(catalog, policy.content).apply(rows, context)
    assert verdict.keep.all(), "never a blocked, over-maturity or unavailable item"
    assert not set(out) & exclude, "never an excluded item"
    if "exclude_consumed" in [r.name for r in engine.rules]:
        assert not set(rows.tolist()) & set(users.history(0).tolist())
    if cap is not None:
        categories = catalog.category[rows]
        span = window or len(out)
        for start in range(len(out)):
            window_categories = categories[start : start + span].tolist()
            assert max(window_categories.count(c) for c in set(window_categories)) <= cap
    if share is not None and cap is None and "provider_min_share" not in [r.name for r in engine.rules]:
        limit = max(1, int(share * num_results))
        eligible = _eligible(world, policy, exclude, context, engine)
        counts = np.bincount(catalog.provider[catalog.index.rows(eligible)], minlength=len(PROVIDERS))
        if np.minimum(counts, limit).sum() >= min(num_results, len(eligible)):
            assert np.bincount(catalog.provider[rows], minlength=len(PROVIDERS)).max(initial=0) <= limit


def _eligible(world, policy, exclude, context, engine):
    """Candidate entries (duplicates included) that survive filtering: what any list may draw from."""
    catalog, users, _, ids, _ = world
    rows = catalog.index.rows(ids)
    keep = ContentFilter(catalog, policy.content).apply(rows, context).keep & ~np.isin(ids, list(exclude))
    if "exclude_consumed" in [r.name for r in engine.rules]:
        keep &= ~np.isin(rows, users.history(0))
    return [i for i, k in zip(ids, keep, strict=True) if k]


@settings(max_examples=100, deadline=None)
@given(worlds(), st.integers(1, 15))
def test_with_no_rules_the_order_is_unchanged(world, num_results):
    catalog, _, _, ids, scores = world
    policy = parse_policy("version: none\ncontent: {default_max_maturity: NC17}\nrules: []")
    everywhere = common_pb2.Context(country="US")
    out, _ = run(world, policy, num_results, set(), everywhere)
    order = np.argsort(-scores, kind="stable")
    available = (catalog.region_mask[catalog.index.rows(ids)] == -1) | (
        catalog.region_mask[catalog.index.rows(ids)] & 1 > 0
    )
    expected = [ids[i] for i in order if available[i]][:num_results]
    assert out == expected


@settings(max_examples=150, deadline=None)
@given(worlds(), st.sampled_from([0.2, 0.34, 0.5]), st.integers(2, 15), st.booleans())
def test_provider_caps_hold_whenever_satisfiable(world, share, num_results, with_mmr):
    catalog = world[0]
    rules = (
        "  - name: provider_cap\n    max_share: "
        + str(share)
        + ("\n  - name: mmr\n    lambda: 0.5" if with_mmr else "")
    )
    policy = parse_policy(f"version: cap\ncontent: {{default_max_maturity: NC17}}\nrules:\n{rules}")
    context = common_pb2.Context(country="US")
    out, engine = run(world, policy, num_results, set(), context)
    limit = max(1, int(share * num_results))
    eligible = _eligible(world, policy, set(), context, engine)
    counts = np.bincount(catalog.provider[catalog.index.rows(eligible)], minlength=len(PROVIDERS))
    per_provider = np.bincount(catalog.provider[catalog.index.rows(out)], minlength=len(PROVIDERS))
    if np.minimum(counts, limit).sum() >= min(num_results, len(eligible)):
        assert per_provider.max(initial=0) <= limit
    entries = ContentFilter(catalog, policy.content).apply(catalog.index.rows(world[3]), context).keep.sum()
    assert len(out) == min(num_results, int(entries)), "a soft cap never leaves the list short"


@settings(max_examples=150, deadline=None)
@given(worlds(), st.integers(2, 15))
def test_small_providers_get_their_minimum_share_when_eligible(world, num_results):
    catalog = world[0]
    policy = parse_policy(
        "version: q\ncontent: {default_max_maturity: NC17}\nrules:\n"
        "  - name: provider_min_share\n    min_share: 0.3\n    max_catalog_items: 4"
    )
    context = common_pb2.Context(country="US")
    out, engine = run(world, policy, num_results, set(), context)
    small = np.bincount(catalog.provider, minlength=len(PROVIDERS)) <= 4
    eligible = _eligible(world, policy, set(), context, engine)
    eligible_small = int(small[catalog.provider[catalog.index.rows(eligible)]].sum())
    shown_small = int(small[catalog.provider[catalog.index.rows(out)]].sum())
    assert shown_small >= min(int(np.ceil(0.3 * num_results)), eligible_small, len(out))
