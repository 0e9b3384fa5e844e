"""A synthetic catalog and interaction log with planted structure.

Each user has tastes over categories and over item styles within them; items have a quality that
drives popularity skew, a provider tied to their category, a maturity rating, region availability
and an age. Users interact in sessions, as people do: an interaction stays in the (category, style)
of the previous one with probability `SESSION_STAY`, else moves to a new one drawn from the user's
tastes. So the whole history says what a user likes and the latest actions say what they want
next; a model that learns both beats popularity, and one that weighs recent actions beats one that
only pools the history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.catalog import COUNTRIES
from training.dataset import Dataset, Interactions

STYLES_PER_CATEGORY = 4
SESSION_STAY = 0.6  # chance that the next interaction continues the current (category, style)
DAY = 86_400
NOW = 1_790_000_000  # a fixed "now" so data sets are reproducible


@dataclass(frozen=True)
class SyntheticSize:
    items: int
    users: int
    interactions_per_user: int
    categories: int = 20
    providers: int = 200


SIZES = {
    "tiny": SyntheticSize(items=2_000, users=600, interactions_per_user=30, categories=10, providers=40),
    "demo": SyntheticSize(items=20_000, users=4_000, interactions_per_user=40),
    "100k": SyntheticSize(items=100_000, users=20_000, interactions_per_user=40, providers=1_000),
    "1m": SyntheticSize(items=1_000_000, users=100_000, interactions_per_user=40, providers=5_000),
}


def generate(size: SyntheticSize, seed: int = 7) -> Dataset:
    rng = np.random.default_rng(seed)
    n_cat = size.categories

    category_weight = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    category = rng.choice(n_cat, size.items, p=category_weight / category_weight.sum()).astype(np.int32)
    style = rng.integers(0, STYLES_PER_CATEGORY, size.items).astype(np.int32)
    # Providers each work in one category; within it a few large ones dominate.
    provider_category = np.arange(size.providers) % n_cat
    provider_size = rng.pareto(1.5, size.providers) + 0.1
    provider = np.empty(size.items, dtype=np.int32)
    for c in range(n_cat):
        members = np.flatnonzero(provider_category == c)
        rows = np.flatnonzero(category == c)
        weights = provider_size[members] / provider_size[members].sum()
        provider[rows] = rng.choice(members, len(rows), p=weights)
    maturity = rng.choice(np.arange(1, 6), size.items, p=[0.25, 0.25, 0.25, 0.15, 0.10]).astype(np.int8)
    limited = rng.random(size.items) < 0.15
    region_mask = np.where(limited, rng.integers(1, 2 ** len(COUNTRIES) - 1, size.items), -1).astype(np.int64)
    age_days = rng.exponential(365.0, size.items).astype(np.float32)
    quality = rng.lognormal(0.0, 1.0, size.items) * np.exp(-age_days / 730.0)

    category_taste = rng.dirichlet(np.full(n_cat, 0.3), size.users)
    style_taste = rng.dirichlet(np.full(STYLES_PER_CATEGORY, 0.5), size.users)
    counts = np.maximum(5, rng.poisson(size.interactions_per_user, size.users))
    user = np.repeat(np.arange(size.users, dtype=np.int32), counts)
    chosen_category = _sample_rows(category_taste, user, rng)
    chosen_style = _sample_rows(style_taste, user, rng)
    group = _sessions(chosen_category * STYLES_PER_CATEGORY + chosen_style, user, rng)
    item = _sample_within_groups(category * STYLES_PER_CATEGORY + style, quality, group, rng)
    # Each user's interactions are in sequence order: their times ascend.
    timestamp = NOW - rng.integers(0, 365 * DAY, len(user))
    timestamp = timestamp[np.lexsort((timestamp, user))]  # `user` is sorted, so blocks stay in place

    # Users only ever see what is available in their country.
    user_country = rng.integers(0, len(COUNTRIES), size.users).astype(np.int8)
    available = (region_mask[item] == -1) | ((region_mask[item] >> user_country[user].astype(np.int64)) & 1 == 1)
    user, item, timestamp = user[available], item[available], timestamp[available]
    keep = _first_occurrence(user, item, timestamp)
    interactions = Interactions(user[keep], item[keep].astype(np.int32), timestamp[keep].astype(np.int64))
    return Dataset(
        item_ids=np.array([f"i{n:07d}" for n in range(size.items)]),
        category=category,
        provider=provider,
        maturity=maturity,
        region_mask=region_mask,
        age_days=age_days,
        category_names=[f"category-{c:02d}" for c in range(n_cat)],
        provider_names=[f"provider-{p:05d}" for p in range(size.providers)],
        user_ids=np.array([f"u{n:07d}" for n in range(size.users)]),
        user_country=user_country,
        interactions=interactions,
    )


def _sessions(fresh_group: np.ndarray, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each position keeps the group of the previous one with probability SESSION_STAY, else takes
    its own fresh draw; a user's first interaction always draws (`user` is sorted)."""
    draws = rng.random(len(user)) >= SESSION_STAY
    draws[np.flatnonzero(np.diff(user, prepend=-1))] = True
    source = np.maximum.accumulate(np.where(draws, np.arange(len(user)), 0))
    return fresh_group[source]


def _sample_rows(probabilities: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per entry of `rows` from the categorical distribution in that row."""
    cdf = np.cumsum(probabilities, axis=1)
    draws = rng.random(len(rows))
    out = np.empty(len(rows), dtype=np.int32)
    for start in range(0, len(rows), 200_000):
        part = slice(start, start + 200_000)
        out[part] = (cdf[rows[part]] < draws[part, None]).sum(axis=1)
    return np.minimum(out, probabilities.shape[1] - 1)


def _sample_within_groups(
    item_group: np.ndarray, weight: np.ndarray, wanted: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each wanted group, an item of that group drawn in proportion to its weight."""
    out = np.empty(len(wanted), dtype=np.int64)
    for g in np.unique(wanted):
        members = np.flatnonzero(item_group == g)
        slots = np.flatnonzero(wanted == g)
        if len(members) == 0:  # an empty group (tiny catalogs): fall back to any item
            members = np.arange(len(item_group))
        cdf = np.cumsum(weight[members])
        out[slots] = members[np.searchsorted(cdf, rng.random(len(slots)) * cdf[-1]).clip(0, len(members) - 1)]
    return out


def _first_occurrence(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Indices that keep only the earliest interaction of each (user, item) pair."""
    order = np.lexsort((timestamp, item, user))
    pair = user[order].astype(np.int64) * (item.max() + 1) + item[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    return np.sort(order[first])
