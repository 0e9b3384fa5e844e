"""The evaluation protocol and the baselines, on small planted data."""

from __future__ import annotations

import numpy as np
import pytest

from training.baselines import evaluate_baselines
from training.dataset import Interactions, chronological
from training.protocol import accuracy, relevant_items, split


def interactions(users, items, times) -> Interactions:
    return Interactions(np.array(users, np.int32), np.array(items, np.int32), np.array(times, np.int64))


def test_split_holds_out_each_users_latest_interactions_and_keeps_short_histories_whole():
    data = interactions([0] * 6 + [1] * 3, [5, 4, 3, 2, 1, 0, 7, 8, 9], [60, 50, 40, 30, 20, 10, 1, 2, 3])
    train, test = split(data, holdout=2)
    assert sorted(test.item.tolist()) == [4, 5], "user 0's two latest (times 50, 60)"
    assert sorted(train.item[train.user == 1].tolist()) == [7, 8, 9], "user 1 has too few to evaluate"
    order = chronological(train)
    assert train.item[order][train.user[order] == 0].tolist() == [0, 1, 2, 3]


def test_ties_in_time_are_broken_the_same_way_every_run_and_not_by_item_id():
    users = np.repeat(np.arange(400), 6)
    items = np.tile(np.arange(6), 400) + 10 * users
    data = interactions(users, items, np.full(len(users), 1_000))  # every interaction in the same second
    _, first = split(data, holdout=2)
    _, again = split(interactions(users[::-1], items[::-1], np.full(len(users), 1_000)), holdout=2)
    assert sorted(first.item.tolist()) == sorted(again.item.tolist()), "input order does not matter"
    newest_ids = np.mean([set(g.tolist()) == {u * 10 + 4, u * 10 + 5} for u, g in first.items_by_user().items()])
    assert newest_ids < 0.2, "the held-out ones are not simply the highest item ids"


def test_ties_in_file_order_keep_the_order_read_through_every_subset():
    users = np.repeat(np.arange(50), 6)
    items = np.tile([14, 12, 15, 11, 13, 10], 50) + 100 * users  # read in this order, all in one second
    read = Interactions(users.astype(np.int32), items.astype(np.int32), np.full(len(users), 1_000), ties="file")
    train, test = split(read, holdout=2)
    assert test.ties == train.ties == "file"
    assert [g.tolist() for g in test.items_by_user().values()][:2] == [[13, 10], [113, 110]], "the last two read"
    assert train.items_by_user()[0].tolist() == [14, 12, 15, 11], "the rest in the order read"
    hashed = split(Interactions(read.user, read.item, read.timestamp), holdout=2)[1]
    assert sorted(hashed.item.tolist()) != sorted(test.item.tolist()), "the hash order holds out others"
    with pytest.raises(ValueError, match="tie order 'random'"):
        Interactions(read.user, read.item, read.timestamp, ties="random")


def test_accuracy_counts_recall_and_ndcg_per_user_then_averages():
    lists = {0: np.array([3, 1, 2]), 1: np.array([9, 8])}
    relevant = {0: {1, 5}, 1: {7}}
    metrics = accuracy(lists, relevant)
    assert metrics["recall@10"] == pytest.approx((0.5 + 0.0) / 2)
    ndcg_user0 = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert metrics["ndcg@10"] == pytest.approx(ndcg_user0 / 2, abs=1e-4)


def planted_pairs(rng: np.random.Generator, users: int = 600, pairs: int = 40) -> Interactions:
    """Items come in pairs (2k, 2k+1): people who take one take the other. Item 0 is popular. Of the
    two held-out items, one has its partner in the training history (predictable), one not: the
    best possible Recall@10 is 0.5."""
    rows, items, times = [], [], []
    for user in range(users):
        chosen = rng.choice(np.arange(1, pairs), 5, replace=False)
        sequence = [2 * chosen[0], 2 * chosen[1], 2 * chosen[2], 0, 2 * chosen[4], 2 * chosen[4] + 1]
        sequence += [2 * chosen[0] + 1, 2 * chosen[3] + 1]
        rows += [user] * len(sequence)
        items += sequence
        times += list(range(len(sequence)))
    return interactions(rows, items, times)


def test_item_knn_and_ease_learn_planted_pairs_that_popularity_and_random_cannot():
    data = planted_pairs(np.random.default_rng(0))
    train, test = split(data, holdout=2)
    result = evaluate_baselines(train, relevant_items(test), num_items=80, lambdas=(1.0, 10.0))
    m = result.metrics
    assert m["EASE^R"]["recall@10"] > 0.4 and m["item-kNN"]["recall@10"] > 0.25
    best_blind = max(m["popularity"]["recall@10"], m["random"]["recall@10"])
    assert min(m["EASE^R"]["recall@10"], m["item-kNN"]["recall@10"]) > 2 * best_blind
    assert result.ease_lambda in (1.0, 10.0) and result.dense_items == 80 and result.dense_share_of_held_out == 1.0


def test_a_catalog_above_the_dense_limit_is_fit_on_its_most_popular_part_and_says_so():
    data = planted_pairs(np.random.default_rng(1))
    train, test = split(data, holdout=2)
    result = evaluate_baselines(train, relevant_items(test), num_items=80, max_dense_items=60, lambdas=(10.0,))
    assert result.dense_items == 60 and 0 < result.dense_share_of_held_out < 1
    assert any("60 most popular of 80 items" in note for note in result.notes)
