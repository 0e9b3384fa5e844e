"""The in-memory data set every trainer consumes, and its temporal split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Interactions:
    user: np.ndarray  # int32 user rows
    item: np.ndarray  # int32 item rows
    timestamp: np.ndarray  # int64 seconds

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user[mask], self.item[mask], self.timestamp[mask])

    def items_by_user(self) -> dict[int, np.ndarray]:
        """Each user's items, grouped once (a per-user mask is quadratic at a million items)."""
        order = np.argsort(self.user, kind="stable")
        users, starts = np.unique(self.user[order], return_index=True)
        groups = np.split(self.item[order], starts[1:])
        return {int(user): items for user, items in zip(users, groups, strict=True)}


@dataclass
class Dataset:
    item_ids: np.ndarray
    category: np.ndarray
    provider: np.ndarray
    maturity: np.ndarray
    region_mask: np.ndarray
    age_days: np.ndarray
    category_names: list[str]
    provider_names: list[str]
    user_ids: np.ndarray
    user_country: np.ndarray  # int8 index into COUNTRIES: the user's home country
    interactions: Interactions
    source: str = "synthetic"

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)


def at_most(users: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """`users` when there are no more than `limit`, else a sorted sample of `limit` of them."""
    if len(users) <= limit:
        return users
    return np.sort(rng.choice(users, limit, replace=False))


def temporal_split(
    interactions: Interactions, holdout: int = 2, min_train: int = 3
) -> tuple[Interactions, Interactions]:
    """Hold out each user's latest `holdout` interactions; users with too few keep all in train."""
    order = np.lexsort((interactions.timestamp, interactions.user))
    users = interactions.user[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(users)) - starts[users]
    from_end = counts[users] - position
    held = (from_end <= holdout) & (counts[users] >= holdout + min_train)
    test = np.zeros(len(order), dtype=bool)
    test[order[held]] = True
    return interactions.take(~test), interactions.take(test)
