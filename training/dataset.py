"""The in-memory data set every trainer consumes, its time order and its temporal split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# How interactions a user made in the same second are ordered. "hash": by `tie_break`, an order that
# carries no signal. "file": in the order they were read, which every subset keeps (a stable sort by
# time, as SASRec's own preprocessing of MovieLens sorts); where the file's order holds a pattern,
# a model may learn it.
TIE_ORDERS = ("hash", "file")


@dataclass
class Interactions:
    user: np.ndarray  # int32 user rows
    item: np.ndarray  # int32 item rows
    timestamp: np.ndarray  # int64 seconds
    ties: str = "hash"  # one of TIE_ORDERS

    def __post_init__(self) -> None:
        if self.ties not in TIE_ORDERS:
            raise ValueError(f"tie order {self.ties!r}: expected one of {', '.join(TIE_ORDERS)}")

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user[mask], self.item[mask], self.timestamp[mask], self.ties)

    def items_by_user(self) -> dict[int, np.ndarray]:
        """Each user's items in time order, grouped once (a per-user mask is quadratic at a million items)."""
        if len(self) == 0:
            return {}
        order = chronological(self)
        users, starts = np.unique(self.user[order], return_index=True)
        groups = np.split(self.item[order], starts[1:])
        return {int(user): items for user, items in zip(users, groups, strict=True)}


def tie_break(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random order for interactions with the same timestamp.

    A quarter of MovieLens ratings share their second with another rating of the same user. Sorting
    those by item id would make the held-out interactions the newest movies of a session, which a
    model could learn without learning anything about people; a hash of (user, item) carries no
    such signal and gives the same order on every run.
    """
    mixed = user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    mixed ^= item.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
    return (mixed >> np.uint64(17)) ^ mixed


def chronological(interactions: Interactions) -> np.ndarray:
    """Indices ordering the interactions by user, then time, then as their tie order says."""
    i = interactions
    within = np.arange(len(i)) if i.ties == "file" else tie_break(i.user, i.item)
    return np.lexsort((within, i.timestamp, i.user))


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


def latest_per_user(interactions: Interactions, count: np.ndarray | int, min_rest: int = 0) -> np.ndarray:
    """Mask of each user's latest `count` interactions (an int, or one count per user row), kept
    only for users who keep at least `min_rest` earlier ones."""
    order = chronological(interactions)
    users = interactions.user[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    from_end = counts[users] - (np.arange(len(users)) - starts[users])
    wanted = np.broadcast_to(np.asarray(count), counts.shape)[users]
    latest = (from_end <= wanted) & (counts[users] - wanted >= min_rest)
    mask = np.zeros(len(order), dtype=bool)
    mask[order[latest]] = True
    return mask


def temporal_split(
    interactions: Interactions, holdout: int = 2, min_train: int = 3
) -> tuple[Interactions, Interactions]:
    """Hold out each user's latest `holdout` interactions; users with too few keep all in train."""
    test = latest_per_user(interactions, holdout, min_train)
    return interactions.take(~test), interactions.take(test)
