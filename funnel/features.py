"""Ranker features for (user, candidate items), computed the same way in training and serving.

Dense features are floats; categorical ones are small integers the ranker embeds. Everything is a
vectorised gather over column arrays: no per-item Python on the serving path. An unknown (cold)
user gets zeros for the personal features and still gets valid rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.catalog import COUNTRIES, Catalog, Embeddings, Users

DENSE_FEATURES = (
    "similarity",  # two-tower inner product of the stored user vector and the item vector
    "category_affinity",  # share of the user's history in the item's category (user x item cross)
    "log_popularity",  # scaled log interaction count
    "freshness",  # exp(-age / 1 year)
    "maturity",  # rating / 5
    "user_activity",  # scaled log history length
)
CATEGORICAL_FEATURES = ("item_category", "item_provider", "item_age_bucket", "country")
NUM_DENSE = len(DENSE_FEATURES)
NUM_CATEGORICAL = len(CATEGORICAL_FEATURES)
AGE_EDGES_DAYS = np.array([7, 30, 90, 180, 365, 730, 1825], dtype=np.float32)
NUM_AGE_BUCKETS = len(AGE_EDGES_DAYS) + 1


def age_bucket(age_days: np.ndarray) -> np.ndarray:
    """Item age in days -> bucket index, shared by the two-tower item tower and the ranker."""
    return np.digitize(age_days, AGE_EDGES_DAYS).astype(np.int64)


@dataclass
class FeatureBatch:
    dense: np.ndarray  # float32 [N, NUM_DENSE]
    categorical: np.ndarray  # int64 [N, NUM_CATEGORICAL]

    def __len__(self) -> int:
        return len(self.dense)


def country_slot(country: str) -> int:
    """0 = unknown, else 1 + index in COUNTRIES."""
    return COUNTRIES.index(country) + 1 if country in COUNTRIES else 0


class FeatureStore:
    def __init__(self, catalog: Catalog, users: Users, embeddings: Embeddings) -> None:
        self.catalog = catalog
        self.users = users
        self.embeddings = embeddings
        popularity = np.log1p(catalog.popularity.astype(np.float32))
        self._log_popularity = popularity / max(float(popularity.max()), 1.0)
        self._freshness = np.exp(-catalog.age_days / 365.0).astype(np.float32)
        self._maturity = (catalog.maturity / 5.0).astype(np.float32)
        activity = np.log1p(np.diff(users.history_indptr).astype(np.float32))
        self._activity = activity / max(float(activity.max()), 1.0)
        self._item_categorical = np.stack(
            [catalog.category, catalog.provider, age_bucket(catalog.age_days)], axis=1
        ).astype(np.int64)

    def cardinalities(self) -> list[int]:
        """Embedding table sizes the ranker needs, in CATEGORICAL_FEATURES order."""
        return [
            len(self.catalog.category_names),
            len(self.catalog.provider_names),
            NUM_AGE_BUCKETS,
            len(COUNTRIES) + 1,
        ]

    def features(self, user_row: int, item_rows: np.ndarray, country: int = -1) -> FeatureBatch:
        """Rows for one user; user_row -1 is a cold user; `country` is a country slot, -1 = the
        user's home country (unknown for a cold user)."""
        dense = np.empty((len(item_rows), NUM_DENSE), dtype=np.float32)
        if user_row >= 0:
            dense[:, 0] = self.embeddings.items[item_rows] @ self.embeddings.users[user_row]
            dense[:, 1] = self.users.category_affinity[user_row, self.catalog.category[item_rows]]
            dense[:, 5] = self._activity[user_row]
        else:
            dense[:, [0, 1, 5]] = 0.0
        dense[:, 2] = self._log_popularity[item_rows]
        dense[:, 3] = self._freshness[item_rows]
        dense[:, 4] = self._maturity[item_rows]
        if country < 0:
            country = int(self.users.country[user_row]) + 1 if user_row >= 0 else 0
        categorical = np.empty((len(item_rows), NUM_CATEGORICAL), dtype=np.int64)
        categorical[:, :3] = self._item_categorical[item_rows]
        categorical[:, 3] = country
        return FeatureBatch(dense, categorical)
