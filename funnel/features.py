"""Ranker features for (user, candidate items), computed the same way in training and serving.

Everything is a vectorised gather over column arrays: no per-item Python on the serving path.
An unknown (cold) user gets zeros for the personal features and still gets a valid row.
"""

from __future__ import annotations

import numpy as np

from funnel.artifacts.catalog import Catalog, Embeddings, Users

FEATURE_NAMES = (
    "similarity",  # two-tower inner product
    "category_affinity",  # share of the user's history in the item's category
    "log_popularity",  # scaled log interaction count
    "freshness",  # exp(-age / 1 year)
    "maturity",  # rating / 5
    "user_activity",  # scaled log history length
)
NUM_FEATURES = len(FEATURE_NAMES)


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

    def features(self, user_row: int, item_rows: np.ndarray) -> np.ndarray:
        """float32 [len(item_rows), NUM_FEATURES]; user_row -1 means a cold user."""
        out = np.empty((len(item_rows), NUM_FEATURES), dtype=np.float32)
        if user_row >= 0:
            out[:, 0] = self.embeddings.items[item_rows] @ self.embeddings.users[user_row]
            out[:, 1] = self.users.category_affinity[user_row, self.catalog.category[item_rows]]
            out[:, 5] = self._activity[user_row]
        else:
            out[:, 0] = 0.0
            out[:, 1] = 0.0
            out[:, 5] = 0.0
        out[:, 2] = self._log_popularity[item_rows]
        out[:, 3] = self._freshness[item_rows]
        out[:, 4] = self._maturity[item_rows]
        return out
