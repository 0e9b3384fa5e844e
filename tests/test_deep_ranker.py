"""The deep ranker: its item-id columns as the feature store lays them out, and target attention
that finds what the engineered features cannot, on a planted data set."""

from __future__ import annotations

import numpy as np
import torch

from funnel.artifacts.activity import ItemActivity
from funnel.features import (
    NO_ITEM,
    NUM_CATEGORICAL,
    NUM_DENSE,
    NUM_EMBEDDED,
    RECENT_ID_ITEMS,
    FeatureBatch,
    FeatureStore,
    UserContext,
)
from training.covisitation import CoVisitationConfig, build_covisitation
from training.fit import catalog_of
from training.impressions import Impressions
from training.ranker import DeepRanker, RankerConfig, score, train_ranker
from training.synthetic import SIZES, generate

ITEMS = 200
CARDINALITIES = [1] * NUM_EMBEDDED


def partner(items: np.ndarray) -> np.ndarray:
    """Items come in pairs (0-1, 2-3, ...): the planted next item after an item is its partner."""
    return items ^ 1


def planted_rows(contexts: int, rng: np.random.Generator) -> tuple[FeatureBatch, np.ndarray, np.ndarray]:
    """Per context, a history of RECENT_ID_ITEMS random items and three candidates: the partner of
    the latest item (the positive), the partner of an older item and a random item (negatives).
    Every item is as often a positive as a negative, and the dense features are all zero: nothing
    but the item ids and their order tells the positive apart."""
    histories = rng.integers(0, ITEMS, (contexts, RECENT_ID_ITEMS))
    older = histories[np.arange(contexts), rng.integers(0, RECENT_ID_ITEMS - 1, contexts)]
    candidates = np.stack([partner(histories[:, -1]), partner(older), rng.integers(0, ITEMS, contexts)], axis=1)
    rows = contexts * 3
    categorical = np.zeros((rows, NUM_CATEGORICAL), np.int64)
    categorical[:, NUM_EMBEDDED] = candidates.ravel()
    categorical[:, NUM_EMBEDDED + 1 :] = np.repeat(histories, 3, axis=0)
    labels = np.tile(np.array([1.0, 0.0, 0.0], np.float32), contexts)
    return FeatureBatch(np.zeros((rows, NUM_DENSE), np.float32), categorical), labels, np.repeat(np.arange(contexts), 3)


def positive_wins(model: torch.nn.Module, rng: np.random.Generator) -> float:
    """Share of fresh contexts where the positive outscores both negatives."""
    features, _, _ = planted_rows(2000, rng)
    scores = score(model, features).reshape(-1, 3)
    return float(np.mean((scores[:, 0] > scores[:, 1]) & (scores[:, 0] > scores[:, 2])))


def partner_vectors() -> np.ndarray:
    """Item vectors as retrieval would learn them here: partners close, other items unrelated."""
    rng = np.random.default_rng(2)
    pairs = rng.normal(size=(ITEMS // 2, 64))
    return (np.repeat(pairs, 2, axis=0) + 0.3 * rng.normal(size=(ITEMS, 64))).astype(np.float32)


def train_planted(config: RankerConfig, contexts: int = 6000) -> DeepRanker:
    features, labels, users = planted_rows(contexts, np.random.default_rng(1))
    impressions = Impressions(features, labels, users, users, cuts_drawn=contexts, positive_cuts=contexts)
    return train_ranker(impressions, CARDINALITIES, partner_vectors(), config).model


def test_target_attention_ranks_the_latest_items_partner_above_equally_popular_items():
    config = RankerConfig(max_epochs=10)  # the served settings: retrieval's item vectors, frozen
    # Beating the older item's partner takes the order of the history: pooling the history (max or
    # mean similarity) scores both partners alike. Without item ids the three rows are identical.
    wins = positive_wins(train_planted(config), np.random.default_rng(3))
    assert wins >= 0.9, wins


def test_unknown_and_missing_items_share_the_zero_row_and_score_finitely():
    model = DeepRanker(CARDINALITIES, num_items=ITEMS, item_dim=16)
    categorical = np.zeros((4, NUM_CATEGORICAL), np.int64)
    categorical[:, NUM_EMBEDDED:] = NO_ITEM
    categorical[1, NUM_EMBEDDED] = ITEMS + 5  # an item added after training
    categorical[2, NUM_EMBEDDED] = ITEMS + 6
    categorical[3, NUM_EMBEDDED:] = 3
    scores = score(model.eval(), FeatureBatch(np.zeros((4, NUM_DENSE), np.float32), categorical))
    assert np.isfinite(scores).all()
    assert scores[0] == scores[1] == scores[2]  # padding and items outside the table read alike
    assert scores[3] != scores[0]


def test_the_feature_store_right_aligns_the_latest_items_after_the_candidate():
    data = generate(SIZES["tiny"], seed=7)
    catalog = catalog_of(data, data.interactions)
    vectors = np.random.default_rng(0).normal(size=(data.num_items, 8)).astype(np.float32)
    activity = ItemActivity.from_interactions(data.interactions.item, data.interactions.timestamp, data.num_items)
    covisitation = build_covisitation(data.interactions, data.num_items, CoVisitationConfig())
    store = FeatureStore(catalog, vectors, covisitation, activity)
    short, long = np.array([5, 9, 2]), np.arange(100, 100 + RECENT_ID_ITEMS + 7)
    candidates = np.array([11, 12])
    for history in (short, long):
        rows = store.features(UserContext(history, 0, 0), candidates).categorical
        np.testing.assert_array_equal(rows[:, NUM_EMBEDDED], candidates)
        latest = history[-RECENT_ID_ITEMS:]
        expected = np.concatenate([np.full(RECENT_ID_ITEMS - len(latest), NO_ITEM), latest])
        for row in rows:
            np.testing.assert_array_equal(row[NUM_EMBEDDED + 1 :], expected)
    empty = store.features(UserContext(np.zeros(0, np.int64), 0, 0), candidates).categorical
    assert (empty[:, NUM_EMBEDDED + 1 :] == NO_ITEM).all()


def test_rows_grouped_by_history_score_as_the_same_rows_shuffled():
    """Serving sends each user's rows together (one run per request, a broadcast per run); training
    shuffles rows (a history gathered per row). Both paths give the same scores."""
    rng = np.random.default_rng(5)
    model = DeepRanker(CARDINALITIES, num_items=ITEMS, item_dim=16, item_vectors=partner_vectors()).eval()
    runs = 40
    histories = rng.integers(-1, ITEMS, (runs, RECENT_ID_ITEMS))
    histories[0] = NO_ITEM  # a user without history
    categorical = np.zeros((runs * 7, NUM_CATEGORICAL), np.int64)
    categorical[:, NUM_EMBEDDED] = rng.integers(0, ITEMS + 3, runs * 7)
    categorical[:, NUM_EMBEDDED + 1 :] = np.repeat(histories, 7, axis=0)
    dense = rng.normal(size=(runs * 7, NUM_DENSE)).astype(np.float32)
    order = rng.permutation(runs * 7)
    grouped = [score(model, FeatureBatch(dense[r], categorical[r])) for r in np.split(np.arange(runs * 7), runs)]
    few_runs = score(model, FeatureBatch(dense[:35], categorical[:35]))  # 5 runs: the serving path
    shuffled = score(model, FeatureBatch(dense[order], categorical[order]))  # ~280 runs: the gathered path
    np.testing.assert_allclose(few_runs, np.concatenate(grouped[:5]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(shuffled[np.argsort(order)], np.concatenate(grouped), rtol=1e-5, atol=1e-6)


def test_the_configured_widths_are_the_trained_model_s():
    model = train_planted(RankerConfig(max_epochs=1, hidden=32, item_summary=8), contexts=600)
    assert (model.deep[0].out_features, model.deep[2].out_features, model.summary.out_features) == (32, 16, 8)
