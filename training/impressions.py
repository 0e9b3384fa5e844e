"""The ranker's training data: impressions at several cuts of every user's recent past.

Each user's training sequence is split in time: the earlier part trains the retrieval models the
impressions are drawn with, the later part (`tail_fraction`) is where cuts are made. At a cut,
the user's history is everything before it, retrieval runs as it would have then (same sources,
same fusion), and the candidates among the next `horizon` interactions are the positives; a
sample of the other candidates are the negatives. So every user contributes many (history ->
next items) examples, on exactly the candidate lists the ranker re-orders when serving, with
features from models that never saw what they are asked to predict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from funnel.features import NUM_CATEGORICAL, NUM_DENSE, FeatureBatch, FeatureStore, UserContext
from training.candidates import Retriever
from training.dataset import Interactions, chronological, latest_per_user


@dataclass(frozen=True)
class ImpressionConfig:
    tail_fraction: float = 0.3  # each user's latest share of training interactions that yields cuts
    min_history: int = 3  # interactions before the first cut
    cuts_per_user: int = 8
    # Cuts are drawn in random batches of `cut_batch` until `min_positive_cuts` of them had a
    # positive among their candidates (or `max_cuts` were drawn): on a catalog of a million items
    # retrieval finds the next item for one cut in ten, and a few thousand examples teach nothing.
    cut_batch: int = 15_000
    min_positive_cuts: int = 6_000
    max_cuts: int = 75_000
    horizon: int = 3  # the next interactions after a cut that count as positives
    negatives_per_cut: int = 24
    # Of those negatives, how many come from the first `hard_negative_depth` candidates in retrieval's
    # fused order (the rest uniformly from all of them): the top of the list is where the ranker's
    # order is read, and candidates drawn uniformly from hundreds are mostly easy to tell apart.
    hard_negatives_per_cut: int = 0
    hard_negative_depth: int = 50
    seed: int = 7


@dataclass
class Sequences:
    """Each user's interactions in time order, as CSR arrays."""

    indptr: np.ndarray
    items: np.ndarray
    times: np.ndarray

    @classmethod
    def of(cls, interactions: Interactions, num_users: int) -> Sequences:
        order = chronological(interactions)
        counts = np.bincount(interactions.user, minlength=num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, interactions.item[order].astype(np.int64), interactions.timestamp[order].astype(np.int64))

    def of_user(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.indptr[user], self.indptr[user + 1]
        return self.items[start:end], self.times[start:end]


def tail_mask(train: Interactions, config: ImpressionConfig) -> np.ndarray:
    """The interactions at which cuts may be made: each user's latest `tail_fraction`, keeping at
    least `min_history` before them."""
    counts = np.bincount(train.user)
    tail = np.floor(counts * config.tail_fraction).astype(np.int64)
    return latest_per_user(train, tail, config.min_history)


@dataclass
class Cut:
    user: int
    position: int  # index into the user's sequence: history is everything before it


def choose_cuts(sequences: Sequences, tail: Sequences, config: ImpressionConfig, users: np.ndarray) -> list[Cut]:
    """Up to `cuts_per_user` evenly spaced cuts inside each user's tail."""
    cuts = []
    for user in users.tolist():
        length = int(sequences.indptr[user + 1] - sequences.indptr[user])
        tail_length = int(tail.indptr[user + 1] - tail.indptr[user])
        if tail_length == 0:
            continue
        first = length - tail_length
        count = min(config.cuts_per_user, tail_length)
        positions = np.unique(np.linspace(first, length - 1, count).round().astype(int))
        cuts.extend(Cut(user, int(p)) for p in positions)
    return cuts


Encode = Callable[[list[np.ndarray], np.ndarray], np.ndarray]  # (histories, country slots) -> user vectors


@dataclass
class Impressions:
    features: FeatureBatch
    labels: np.ndarray  # float32, 1 for a next item
    users: np.ndarray  # the user each row belongs to (the ranker's validation holds users apart)
    cuts: np.ndarray  # the cut each row belongs to (a listwise loss compares a cut's rows); rows of a cut are adjacent
    cuts_drawn: int
    positive_cuts: int  # of those, the cuts with a next item among their candidates


def draw_impressions(
    cuts: list[Cut], sequences: Sequences, country: np.ndarray, encode: Encode, retriever: Retriever,
    store: FeatureStore, config: ImpressionConfig,
) -> Impressions:  # fmt: skip
    """Impressions from random batches of `cuts` (see `ImpressionConfig`)."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(cuts))
    parts: list[tuple[FeatureBatch, np.ndarray, np.ndarray, np.ndarray]] = []
    drawn = positive_cuts = 0
    while drawn < min(len(cuts), config.max_cuts) and (not parts or positive_cuts < config.min_positive_cuts):
        batch = [cuts[n] for n in np.sort(order[drawn : drawn + config.cut_batch])]
        histories = [sequences.of_user(c.user)[0][: c.position] for c in batch]
        queries = encode(histories, country[[c.user for c in batch]])
        features, labels, groups = build_impressions(batch, histories, sequences, country, retriever, store,
                                                     queries, config, rng)  # fmt: skip
        users = np.array([c.user for c in batch], dtype=np.int64)
        parts.append((features, labels, users[groups], drawn + groups))
        positive_cuts += len(np.unique(groups))
        drawn += len(batch)
    if positive_cuts == 0:
        raise ValueError("no cut had a positive among its candidates: too little data to train a ranker")
    return Impressions(
        FeatureBatch.concat([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
        drawn,
        positive_cuts,
    )


def draw_negatives(others: np.ndarray, config: ImpressionConfig, rng: np.random.Generator) -> np.ndarray:
    """Positions of a cut's negatives among `others` (its unclicked candidates' positions, ascending):
    `hard_negatives_per_cut` from those in the first `hard_negative_depth`, the rest from all others."""
    total = min(len(others), config.negatives_per_cut)
    if config.hard_negatives_per_cut == 0:
        return rng.choice(others, total, replace=False)
    top = others[others < config.hard_negative_depth]
    hard = rng.choice(top, min(len(top), config.hard_negatives_per_cut, total), replace=False)
    rest = np.setdiff1d(others, hard, assume_unique=True)
    return np.concatenate([hard, rng.choice(rest, total - len(hard), replace=False)])


def build_impressions(
    cuts: list[Cut], histories: list[np.ndarray], sequences: Sequences, country: np.ndarray, retriever: Retriever,
    store: FeatureStore, queries: np.ndarray, config: ImpressionConfig, rng: np.random.Generator,
) -> tuple[FeatureBatch, np.ndarray, np.ndarray]:  # fmt: skip
    """Features, labels and the cut each row belongs to (its index in `cuts`), for every cut with a
    positive among its candidates (a cut whose next items retrieval missed teaches the ranker nothing)."""
    found = retriever.retrieve(histories, queries)
    batches, labels, groups = [], [], []
    for n, (cut, candidates) in enumerate(zip(cuts, found, strict=True)):
        items, times = sequences.of_user(cut.user)
        positives = items[cut.position : cut.position + config.horizon]
        clicked = np.isin(candidates.rows, positives)
        if not clicked.any():
            continue
        negatives = draw_negatives(np.flatnonzero(~clicked), config, rng)
        keep = np.sort(np.concatenate([np.flatnonzero(clicked), negatives]))
        user = UserContext(histories[n], int(times[cut.position - 1]), int(country[cut.user]), queries[n])
        # Rows keep their position in the fused list: the rank feature is read from it.
        batches.append(store.features(user, candidates.rows[keep], candidates.sources[keep], positions=keep))
        labels.append(clicked[keep].astype(np.float32))
        groups.append(np.full(len(keep), n, dtype=np.int64))
    if not batches:
        empty = FeatureBatch(np.zeros((0, NUM_DENSE), np.float32), np.zeros((0, NUM_CATEGORICAL), np.int64))
        return empty, np.zeros(0, np.float32), np.zeros(0, np.int64)
    return FeatureBatch.concat(batches), np.concatenate(labels), np.concatenate(groups)
