"""Candidate sources on small planted data: co-visitation finds a planted next item; filtered search
never returns what may not be shown and still returns k items when k are allowed."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from funnel.artifacts.catalog import COUNTRIES, Catalog
from funnel.policy.document import ContentRules
from funnel.retrieval.allowed import Allowed, packed
from funnel.retrieval.allowed_items import AllowedItems
from funnel.retrieval.faiss_index import IndexSpec, build_index, skip_unused_polysemous_training
from funnel.retrieval.filtered_search import filtered_search
from funnel.retrieval.sources import CoVisitationSource, PopularSource, Query
from funnel.v1 import common_pb2
from training.covisitation import CoVisitationConfig, build_covisitation
from training.dataset import Interactions

ITEMS = 400


def planted_sequences(rng: np.random.Generator) -> Interactions:
    """300 users each interact with a few random items; half of them go on from item 7 to item 42."""
    users, items, times = [], [], []
    for user in range(300):
        sequence = list(rng.choice(np.arange(100, ITEMS), 6, replace=False))
        if user % 2 == 0:
            sequence[3:3] = [7, 42]
        users += [user] * len(sequence)
        items += sequence
        times += list(range(1_700_000_000, 1_700_000_000 + len(sequence)))
    return Interactions(np.array(users, np.int32), np.array(items, np.int32), np.array(times, np.int64))


def test_co_visitation_finds_the_planted_next_item_first():
    covisitation = build_covisitation(planted_sequences(np.random.default_rng(0)), ITEMS, CoVisitationConfig())
    neighbours, weights = covisitation.row(7)
    assert neighbours[0] == 42 and weights[0] > 2 * weights[1], "42 follows 7 for half of the users"
    source = CoVisitationSource(covisitation, np.ones(ITEMS, dtype=bool))
    everything = np.ones(ITEMS, dtype=bool)
    for history in ([7], [150, 260, 7], [7, 150, 260]):
        hits = source.fetch(Query(np.array(history), Allowed(everything, np.zeros(0, np.int64))), 5)
        assert hits.rows[0] == 42, f"after {history}"
        assert np.all(np.diff(hits.scores) <= 0)
    without_42 = Allowed(everything, np.array([42]))
    assert 42 not in source.fetch(Query(np.array([7]), without_42), 50).rows, "a filtered item is never a candidate"


def planted_catalog(rng: np.random.Generator) -> Catalog:
    maturity = rng.choice(np.arange(1, 6), ITEMS).astype(np.int8)
    region = np.where(rng.random(ITEMS) < 0.3, 1 << COUNTRIES.index("DE"), -1).astype(np.int64)  # DE only
    return Catalog(
        item_ids=np.array([f"i{n:04d}" for n in range(ITEMS)]),
        category=np.zeros(ITEMS, np.int32),
        provider=(np.arange(ITEMS) % 4).astype(np.int32),
        maturity=maturity,
        region_mask=region,
        age_days=np.zeros(ITEMS, np.float32),
        popularity=rng.random(ITEMS).astype(np.float32) * 100,
        category_names=["c0"],
        provider_names=["p0", "p1", "p2", "p3"],
    )


@pytest.mark.parametrize(
    ("factory", "params"),
    [
        ("Flat", ""),
        ("HNSW32", "efSearch=400"),
        ("IVF8,Flat", "nprobe=8"),
        ("IVF8,PQ8x4,RFlat", "nprobe=8,k_factor_rf=64"),
    ],
)
def test_filtered_search_never_returns_a_blocked_out_of_region_or_excluded_item(factory, params):
    rng = np.random.default_rng(1)
    catalog = planted_catalog(rng)
    vectors = rng.standard_normal((ITEMS, 16)).astype(np.float32)
    faiss.normalize_L2(vectors)
    rows = np.arange(0, ITEMS, 2, dtype=np.int64)  # a shard holding every other item
    index = build_index(vectors[rows], rows, IndexSpec(factory, params))
    rules = ContentRules(blocked_item_ids=frozenset({"i0010", "i0012"}), blocked_providers=frozenset({"p2"}))
    allowed_items = AllowedItems(catalog, rules)
    context = common_pb2.Context(country="US", max_maturity=common_pb2.MATURITY_RATING_PG13)
    excluded = np.arange(0, 60, 2)
    allowed = allowed_items.for_request(context, excluded)
    on_shard_allowed = rows[allowed[rows]]
    assert 20 < len(on_shard_allowed) < len(rows) // 2, "the planted rules remove most of the shard"
    for query in vectors[:5]:
        hits = filtered_search(index, query[None, :], 10, allowed)
        assert len(hits.rows) == 10, "k allowed items exist, so k come back"
        assert allowed[hits.rows].all()
        assert not np.isin(hits.rows, excluded).any()
        found = catalog.item_ids[hits.rows]
        assert not {"i0010", "i0012"} & set(found)
        assert (catalog.provider[hits.rows] != 2).all() and (catalog.maturity[hits.rows] <= 3).all()
        assert (catalog.region_mask[hits.rows] == -1).all(), "DE-only items never reach a US request"
        if factory == "Flat":  # exact: the best allowed items of the shard, best first
            exact = on_shard_allowed[np.argsort(-(vectors[on_shard_allowed] @ query), kind="stable")[:10]]
            assert set(hits.rows) == set(exact)
    few = np.zeros(ITEMS, dtype=bool)
    few[rows[:3]] = True
    found = filtered_search(index, vectors[:1], 10, Allowed(few, np.zeros(0, np.int64))).rows
    assert sorted(found) == sorted(rows[:3]), "only 3 allowed: 3 back"


def test_every_other_source_filters_the_same_way():
    rng = np.random.default_rng(2)
    catalog = planted_catalog(rng)
    popular = PopularSource(catalog, np.arange(ITEMS))
    allowed = AllowedItems(catalog, ContentRules()).for_request(common_pb2.Context(country="US"), np.arange(20))
    hits = popular.fetch(Query(np.zeros(0, np.int64), allowed), 50)
    assert len(hits.rows) == 50 and allowed[hits.rows].all()
    expected = np.argsort(-catalog.popularity, kind="stable")
    assert hits.rows.tolist() == expected[allowed[expected]][:50].tolist()


def test_an_ivf_index_whose_hnsw_quantizer_cannot_reach_nprobe_lists_is_refused():
    vectors = np.random.default_rng(2).standard_normal((4000, 16)).astype(np.float32)
    rows = np.arange(len(vectors))
    with pytest.raises(ValueError, match="add quantizer_efSearch=128"):
        build_index(vectors, rows, IndexSpec("IVF64_HNSW32,Flat", "nprobe=64"))
    index = build_index(vectors, rows, IndexSpec("IVF64_HNSW32,Flat", "nprobe=64,quantizer_efSearch=64"))
    _, found = index.search(vectors[:1], 10)
    exact = np.argsort(-(vectors @ vectors[0]))[:10]
    assert set(found[0]) == set(exact), "every list probed: the exact answer"


def _quantizing_index(index: faiss.Index) -> faiss.Index:
    ivf = faiss.try_extract_index_ivf(index)
    return faiss.downcast_index(ivf if ivf is not None else index)


@pytest.mark.parametrize("factory", ["PQ8", "IVF8,PQ8", "IVF8,PQ8,RFlat"])
def test_product_quantizers_skip_the_polysemous_training_only_polysemous_search_uses(factory):
    skipped = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    assert _quantizing_index(skipped).do_polysemous_training, "the factory asks for it"
    skip_unused_polysemous_training(skipped, "nprobe=8" if "IVF" in factory else "")
    assert not _quantizing_index(skipped).do_polysemous_training
    kept = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    skip_unused_polysemous_training(kept, "nprobe=8,ht=40")
    assert _quantizing_index(kept).do_polysemous_training, "a polysemous search needs its codes ordered"


def test_a_polysemous_search_is_still_served():
    vectors = np.random.default_rng(3).standard_normal((2000, 16)).astype(np.float32)
    rows = np.arange(len(vectors))
    index = build_index(vectors, rows, IndexSpec("IVF8,PQ8", "nprobe=8,ht=64"))
    _, found = index.search(vectors[:1], 10)
    assert found[0][0] == 0, "the query's own vector is its nearest"


def test_a_requests_allowed_rows_are_the_shared_mask_less_its_exclusions_and_leave_the_mask_alone():
    rng = np.random.default_rng(4)
    content = rng.random(1_003) < 0.8  # not a multiple of 8: the last byte is partial
    content.setflags(write=False)
    excluded = np.concatenate([rng.integers(0, len(content), 40), [0, 7, 8, 1_002, 7]])  # repeats too
    allowed = Allowed(content, excluded, packed(content))
    expected = content.copy()
    expected[excluded] = False
    rows = np.concatenate([rng.permutation(len(content)), [7, 7]])
    assert (allowed[rows] == expected[rows]).all()
    assert (allowed.bitmap() == packed(expected)).all()
    assert (Allowed(content, excluded).bitmap() == packed(expected)).all(), "packed on demand alike"
    assert (allowed.bitmap() == packed(expected)).all(), "a second request's bitmap is the same: nothing shared written"
    assert len(allowed) == len(content) and allowed[np.zeros(0, np.int64)].shape == (0,)
