"""The sequence user tower: one pass over every position is the per-example loop, order matters,
and the bundle's TorchScript is what the retrieval service serves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.retrieval.user_encoder import UserEncoder
from training.dataset import Interactions
from training.sequence_training import SoftmaxConfig, batches, window_loss, windows_of
from training.synthetic import SIZES, generate
from training.two_tower import (
    TwoTower,
    TwoTowerConfig,
    encode_histories,
    export_user_tower,
    item_embeddings,
    latest_first,
    train_two_tower,
)

SEQUENCE = TwoTowerConfig(user_tower="sequence", history_length=6, dropout=0.0, item_init_std=0.5, temperature=0.2)


@pytest.fixture(scope="module")
def data():
    return generate(SIZES["tiny"], seed=7)


def random_interactions(num_users: int, num_items: int, rng: np.random.Generator) -> Interactions:
    counts = rng.integers(1, 15, num_users)  # shorter and longer than one window
    users = np.repeat(np.arange(num_users), counts)
    return Interactions(users, rng.integers(0, num_items, len(users)), rng.permutation(len(users)))


def test_every_window_position_is_the_loss_of_the_per_example_loop(data):
    rng = np.random.default_rng(1)
    train = random_interactions(40, data.num_items, rng)
    model = TwoTower(data, SEQUENCE)
    windows = windows_of(train, data.num_users, SEQUENCE.history_length)
    batch = np.arange(len(windows.user))
    softmax = SoftmaxConfig(SEQUENCE.temperature, full_softmax_items=data.num_items, uniform_negatives=0)
    one_pass = window_loss(model, windows, batch, torch.zeros(data.num_items), softmax, rng)

    # The loop: for each target in each user's sequence, the tower's forward on the items before
    # it (at most a window's worth, latest first), as the service calls it.
    losses = []
    catalog = model.item_vectors(torch.arange(data.num_items))
    for user, items in train_sequences(train).items():
        for n, target in enumerate(items):
            # Windows overlap by one item, so a target's history reaches back to its window's start.
            start = window_start(n, len(items), SEQUENCE.history_length)
            history = items[start:n][::-1].copy()
            vectors = model.item_vectors(torch.from_numpy(history))[None] if len(history) else torch.zeros(1, 1, 64)
            mask = torch.ones(1, max(1, len(history))) if len(history) else torch.zeros(1, 1)
            query = model.users(torch.zeros(1, dtype=torch.int64), vectors, mask, model.country[[user]])
            losses.append(F.cross_entropy(query @ catalog.T / SEQUENCE.temperature, torch.tensor([int(target)])))
    assert len(losses) == len(train.user)
    torch.testing.assert_close(one_pass, torch.stack(losses).mean(), rtol=1e-5, atol=1e-5)


def train_sequences(train: Interactions) -> dict[int, np.ndarray]:
    order = np.lexsort((train.timestamp, train.user))
    users, items = train.user[order], train.item[order]
    return {int(u): items[users == u] for u in np.unique(users)}


def window_start(position: int, count: int, length: int) -> int:
    """The index of the oldest item in the window that predicts item `position` of `count`."""
    if position == 0:
        return 0
    back = (count - 1 - position) // length  # windows counted from the newest
    return max(0, count - 1 - (back + 1) * length)


def planted_walks(num_users: int, ring: int, length: int, rng: np.random.Generator) -> Interactions:
    """Each user walks a ring of items one step at a time, half of them up and half down: the same
    set of recent items is followed by the next item up or the next one down, so only their order
    tells which."""
    starts = rng.integers(0, ring, num_users)
    step = np.where(np.arange(num_users) % 2 == 0, 1, -1)
    items = (starts[:, None] + step[:, None] * np.arange(length)[None, :]) % ring
    users = np.repeat(np.arange(num_users), length)
    return Interactions(users, items.ravel(), np.tile(np.arange(length), num_users))


def hit_rate(model: TwoTower, config: TwoTowerConfig, ring: int) -> float:
    """Histories of three steps up or down the ring: how often the next step is the top item."""
    vectors = item_embeddings(model)
    histories, expected = [], []
    for k in range(ring):
        for step in (1, -1):
            histories.append(np.array([k, k + step, k + 2 * step]) % ring)  # oldest first
            expected.append((k + 3 * step) % ring)
    queries = encode_histories(
        model, vectors, latest_first(histories, config.history_length),
        np.zeros(len(histories), np.int64), np.zeros(len(histories), np.int64),
    )  # fmt: skip
    top = np.argmax(queries @ vectors.T, axis=1)
    return float(np.mean(top == np.array(expected)))


def test_the_sequence_tower_finds_a_planted_next_item_that_mean_pooling_cannot(data):
    rng = np.random.default_rng(2)
    ring = 40
    train = planted_walks(300, ring, 12, rng)
    sequence_config = dataclasses.replace(SEQUENCE, epochs=25, learning_rate=3e-3, batch_positions=1024)
    sequence, _ = train_two_tower(data, train, sequence_config)
    pooled_config = TwoTowerConfig(history_length=6, sequence_aware=False, epochs=25)
    pooled, _ = train_two_tower(data, train, pooled_config)
    sequence_hits, pooled_hits = hit_rate(sequence, sequence_config, ring), hit_rate(pooled, pooled_config, ring)
    # Mean pooling sees the same set for both directions: at best it guesses one of two.
    assert pooled_hits <= 0.6
    assert sequence_hits >= 0.9, (sequence_hits, pooled_hits)


def test_the_bundle_torchscript_serves_the_trained_vectors(data, tmp_path):
    rng = np.random.default_rng(3)
    train = random_interactions(60, data.num_items, rng)
    model, _ = train_two_tower(data, train, dataclasses.replace(SEQUENCE, epochs=1))
    export_user_tower(model, str(tmp_path / "user_tower.pt"))
    vectors = item_embeddings(model)
    encoder = UserEncoder(tmp_path / "user_tower.pt", vectors, SEQUENCE.history_length)
    assert encoder.fast is None, "a tower the numpy path does not know is served by TorchScript"
    for length in (0, 1, 3, SEQUENCE.history_length, 3 * SEQUENCE.history_length):
        history = rng.integers(0, data.num_items, length)
        for slot in (0, 2):
            recent = latest_first([history], SEQUENCE.history_length)
            expected = encode_histories(model, vectors, recent, np.array([slot]), np.zeros(1, np.int64))
            np.testing.assert_allclose(encoder.encode(history, slot), expected, atol=1e-5)


def test_batches_cover_every_window_once_and_stay_near_their_size():
    rng = np.random.default_rng(4)
    train = random_interactions(200, 500, rng)
    windows = windows_of(train, 200, 6)
    groups = batches(windows, 40, rng)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(windows.user)))
    lengths = windows.lengths()
    assert all(len(g) * lengths[g].max() <= 40 or len(g) == 1 for g in groups)


def test_sampled_softmax_finds_each_target_and_never_counts_it_as_its_own_negative():
    from training.sequence_training import next_item_loss

    rng = np.random.default_rng(5)
    table = F.normalize(torch.randn(30, 16), dim=1)
    targets = torch.tensor([3, 3, 7, 29])
    queries = table[targets]  # each query points exactly at its target
    for in_batch in (True, False):
        # 300 uniform draws of 30 items: every target is drawn too, and must be masked there.
        config = SoftmaxConfig(temperature=0.01, full_softmax_items=0, uniform_negatives=300,
                               in_batch_negatives=in_batch)  # fmt: skip
        loss = next_item_loss(queries, targets, lambda rows: table[rows], torch.zeros(30), 30, config, rng)
        assert float(loss) < 0.05, (in_batch, float(loss))
        wrong = next_item_loss(queries, targets.roll(1), lambda rows: table[rows], torch.zeros(30), 30, config, rng)
        assert float(wrong) > 10.0
