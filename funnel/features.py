"""Ranker features for (user, candidate items), computed the same way in training and serving.

What the ranker knows of a user is a `UserContext`: their history as a sequence (stored plus this
session's items, oldest first), when they last acted, their country and the user tower's vector.
Training builds one per cut of a user's past; ranking builds one per request. Dense features are
floats; categorical ones small integers the ranker embeds. Everything is a vectorised gather or a
small matrix product over column arrays: no per-item Python on the serving path. A user without
history gets zeros for the personal features and still gets valid rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.artifacts.activity import ItemActivity
from funnel.artifacts.catalog import COUNTRIES, Catalog, Embeddings, Users
from funnel.artifacts.covisitation import CoVisitation, score_of
from funnel.sources import SOURCE_CODES

DAY = 86_400
DENSE_FEATURES = (
    "two_tower",  # inner product of the user tower's vector and the item vector
    "covisitation",  # log1p of the co-visitation score with the user's latest items
    "recent_similarity_max",  # highest cosine between the item and the user's latest items
    "recent_similarity_mean",
    "last_item_similarity",  # cosine with the very latest item
    "category_share",  # recency-weighted share of the user's history in the item's category
    "log_popularity",  # all-time interactions, log-scaled
    "trend_30d",  # interactions in the 30 days before the user's latest action, log-scaled
    "trend_365d",
    "log_age_at_user_time",  # how long the item had been interacted with when the user last acted
    "unseen_at_user_time",  # 1 when nobody had interacted with the item before then
    "freshness",  # exp(-catalog age / 1 year)
    "maturity",  # rating / 5
    "user_activity",  # log history length, scaled
    "retrieval_rank",  # log position in retrieval's fused list, scaled
)
# Small-vocabulary columns the ranker embeds in tables of its own (`FeatureStore.cardinalities`).
EMBEDDED_FEATURES = ("item_category", "item_provider", "item_age_bucket", "country", "source")
# Item rows: the candidate's, then the user's latest RECENT_ID_ITEMS items, oldest first and
# right-aligned (the last column is the latest item; -1 where the history is shorter). The ranker
# embeds them in one item table and attends from the candidate over the recent ones.
RECENT_ID_ITEMS = 20
ITEM_ID_FEATURES = ("item_row", *(f"recent_item_{k}" for k in range(RECENT_ID_ITEMS, 0, -1)))
CATEGORICAL_FEATURES = EMBEDDED_FEATURES + ITEM_ID_FEATURES
NUM_DENSE = len(DENSE_FEATURES)
NUM_EMBEDDED = len(EMBEDDED_FEATURES)
NUM_CATEGORICAL = len(CATEGORICAL_FEATURES)
NO_ITEM = -1  # a recent-item column the history is too short to fill
AGE_EDGES_DAYS = np.array([7, 30, 90, 180, 365, 730, 1825], dtype=np.float32)
NUM_AGE_BUCKETS = len(AGE_EDGES_DAYS) + 1
NUM_COUNTRY_SLOTS = len(COUNTRIES) + 1  # slot 0 = unknown country
RECENT_ITEMS = 10  # items the similarity features compare with
CATEGORY_DECAY = 0.05  # per item back in the history
MAX_RANK = 2000  # longest candidate list, for scaling the rank feature


def age_bucket(age_days: np.ndarray) -> np.ndarray:
    """Item age in days -> bucket index, shared by the two-tower item tower and the ranker."""
    return np.digitize(age_days, AGE_EDGES_DAYS).astype(np.int64)


def country_slots(country_index: np.ndarray) -> np.ndarray:
    """COUNTRIES index -> the country's embedding slot (user tower and ranker): 1 + index, and 0 for an
    unknown country (a negative index). Training's form; `country_slot` is serving's."""
    return np.where(country_index >= 0, country_index + 1, 0).astype(np.int64)


def country_slot(country: str) -> int:
    """A country code -> its slot, as `country_slots` numbers it (one lookup on the request path)."""
    return _COUNTRY_SLOTS.get(country, _UNKNOWN_COUNTRY_SLOT)


_COUNTRY_SLOTS = dict(zip(COUNTRIES, country_slots(np.arange(len(COUNTRIES))).tolist(), strict=True))
_UNKNOWN_COUNTRY_SLOT = int(country_slots(np.array([-1]))[0])


@dataclass
class FeatureBatch:
    dense: np.ndarray  # float32 [N, NUM_DENSE]
    categorical: np.ndarray  # int64 [N, NUM_CATEGORICAL]

    def __len__(self) -> int:
        return len(self.dense)

    @staticmethod
    def concat(batches: list[FeatureBatch]) -> FeatureBatch:
        dense = np.concatenate([b.dense for b in batches])
        return FeatureBatch(dense, np.concatenate([b.categorical for b in batches]))


@dataclass
class UserContext:
    history: np.ndarray  # int64 item rows, oldest first
    reference_time: int  # seconds: the user's latest action (popularity is measured as of then)
    country: int  # country slot (0 = unknown)
    query: np.ndarray | None = None  # float32 [dim] user tower vector; None = unknown (zeros)

    @classmethod
    def stored(
        cls, users: Users, user_vectors: np.ndarray, row: int, latest: int, session: np.ndarray | None = None,
        country: int = 0, query: np.ndarray | None = None,
    ) -> UserContext:  # fmt: skip
        """From a bundle's user tables: `row` -1 is a user without stored history; `session` items
        follow the stored ones; country 0 and no `query` fall back to the user's home country and
        the vector stored with the bundle. `latest` is the reference time without any history."""
        stored = users.history(row).astype(np.int64) if row >= 0 else np.zeros(0, dtype=np.int64)
        history = stored if session is None else np.concatenate([stored, session])
        times = users.times(row) if row >= 0 else ()
        if country == 0 and row >= 0:
            country = int(users.country[row]) + 1
        if query is None and row >= 0:
            query = np.asarray(user_vectors[row], dtype=np.float32)
        return cls(history, int(times[-1]) if len(times) else latest, country, query)


class FeatureStore:
    def __init__(
        self, catalog: Catalog, item_vectors: np.ndarray, covisitation: CoVisitation, activity: ItemActivity
    ) -> None:
        self.catalog = catalog
        self.item_vectors = item_vectors
        self.covisitation = covisitation
        self.activity = activity
        self._log_popularity = _log_scaled(catalog.popularity.astype(np.float32))
        self._trend_scale = float(np.log1p(max(1.0, catalog.popularity.max())))
        self._freshness = np.exp(-catalog.age_days / 365.0).astype(np.float32)
        self._maturity = (catalog.maturity / 5.0).astype(np.float32)
        self._item_categorical = np.stack(
            [catalog.category, catalog.provider, age_bucket(catalog.age_days)], axis=1
        ).astype(np.int64)

    def cardinalities(self) -> list[int]:
        """Embedding table sizes the ranker needs, in EMBEDDED_FEATURES order."""
        return [
            len(self.catalog.category_names),
            len(self.catalog.provider_names),
            NUM_AGE_BUCKETS,
            len(COUNTRIES) + 1,
            len(SOURCE_CODES),
        ]

    def features(
        self, user: UserContext, item_rows: np.ndarray, sources: np.ndarray | None = None,
        positions: np.ndarray | None = None, out: FeatureBatch | None = None,
    ) -> FeatureBatch:  # fmt: skip
        """Rows for one user's candidates; `sources` are SOURCE_CODES per candidate (None = unknown)
        and `positions` their 0-based places in retrieval's list (None = the order given). `out`,
        when given, is where the rows are written (a shared-memory slot Triton reads from)."""
        n = len(item_rows)
        vectors = self.item_vectors[item_rows]
        if out is None:
            dense = np.zeros((n, NUM_DENSE), dtype=np.float32)
            categorical = np.empty((n, NUM_CATEGORICAL), dtype=np.int64)
        else:
            dense, categorical = out.dense, out.categorical
            dense.fill(0.0)
        history = user.history
        if user.query is not None:
            dense[:, 0] = vectors @ user.query
        if len(history):
            items, values = self.covisitation.scores(history)
            dense[:, 1] = np.log1p(score_of(items, values, item_rows))
            recent = self.item_vectors[history[-RECENT_ITEMS:]]
            similarity = vectors @ recent.T
            dense[:, 2] = similarity.max(axis=1)
            dense[:, 3] = similarity.mean(axis=1)
            dense[:, 4] = similarity[:, -1]
            dense[:, 5] = self._category_share(history)[self.catalog.category[item_rows]]
            dense[:, 13] = np.log1p(len(history)) / np.log1p(1000.0)
        dense[:, 6] = self._log_popularity[item_rows]
        # Strictly before the user's latest action: what happened in that same second may be the
        # very interaction a training example asks about.
        t = user.reference_time
        month, year = self.activity.window_counts(item_rows, t, (30 * DAY, 365 * DAY))
        dense[:, 7] = np.log1p(month) / self._trend_scale
        dense[:, 8] = np.log1p(year) / self._trend_scale
        first = self.activity.first_seen[item_rows]
        seen = (first >= 0) & (first < t)
        dense[:, 9] = np.where(seen, np.log1p(np.maximum(t - first, 0) / DAY) / np.log1p(3650.0), 0.0)
        dense[:, 10] = ~seen
        dense[:, 11] = self._freshness[item_rows]
        dense[:, 12] = self._maturity[item_rows]
        rank = np.arange(n, dtype=np.float32) if positions is None else np.asarray(positions, dtype=np.float32)
        dense[:, 14] = np.log1p(rank) / np.log1p(MAX_RANK)
        categorical[:, :3] = self._item_categorical[item_rows]
        categorical[:, 3] = user.country
        categorical[:, 4] = 0 if sources is None else sources
        categorical[:, NUM_EMBEDDED] = item_rows
        recent_ids = categorical[:, NUM_EMBEDDED + 1 :]
        recent_ids.fill(NO_ITEM)
        if len(history):
            latest = history[-RECENT_ID_ITEMS:]
            recent_ids[:, RECENT_ID_ITEMS - len(latest) :] = latest
        return FeatureBatch(dense, categorical)

    def _category_share(self, history: np.ndarray) -> np.ndarray:
        weights = np.exp(-CATEGORY_DECAY * np.arange(len(history) - 1, -1, -1, dtype=np.float32))
        share = np.bincount(self.catalog.category[history], weights=weights, minlength=len(self.catalog.category_names))
        return (share / weights.sum()).astype(np.float32)


def _log_scaled(counts: np.ndarray) -> np.ndarray:
    logged = np.log1p(counts)
    return (logged / max(float(logged.max()), 1.0)).astype(np.float32)


class BundleFeatures:
    """A bundle's feature tables, loaded once: the store, and what a user's context is built from."""

    def __init__(self, bundle: Path) -> None:
        self.catalog = Catalog.load(bundle)
        self.users = Users.load(bundle)
        embeddings = Embeddings.load(bundle, mmap=True)
        self.user_vectors = embeddings.users
        self.activity = ItemActivity.load(bundle, mmap=True)
        self.store = FeatureStore(self.catalog, embeddings.items, CoVisitation.load(bundle, mmap=True), self.activity)

    def context(
        self, row: int, session: np.ndarray | None = None, country: int = 0, query: np.ndarray | None = None
    ) -> UserContext:
        return UserContext.stored(self.users, self.user_vectors, row, self.activity.latest, session, country, query)
