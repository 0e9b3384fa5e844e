"""The two-tower retrieval model.

Item tower: item id + category + provider + age bucket -> unit vector.
User tower: user id (row 0 = unknown user) + the mean of the item-tower vectors of the user's
recent history + the request's country -> unit vector. A cold user has no id embedding but still
gets a vector from history and context, and training drops the user id at random so the tower
learns to do without it. The user tower is exported as TorchScript for the retrieval service,
which pools history from the item vectors it already holds.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from funnel.artifacts.catalog import COUNTRIES
from funnel.features import NUM_AGE_BUCKETS

NUM_COUNTRY_SLOTS = len(COUNTRIES) + 1  # slot 0 = unknown country


def country_slot(country_index: np.ndarray) -> np.ndarray:
    """COUNTRIES index -> embedding slot; negative (unknown) -> 0."""
    return np.where(country_index >= 0, country_index + 1, 0).astype(np.int64)


class ItemTower(torch.nn.Module):
    def __init__(self, num_items: int, num_categories: int, num_providers: int, dim: int) -> None:
        super().__init__()
        # Sparse gradients: a step moves only the rows in its batch, not all of a million-row table.
        self.item = torch.nn.Embedding(num_items, dim, sparse=True)
        self.category = torch.nn.Embedding(num_categories, dim)
        self.provider = torch.nn.Embedding(num_providers, dim)
        self.age = torch.nn.Embedding(NUM_AGE_BUCKETS, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(4 * dim, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim)
        )
        for table in (self.item, self.category, self.provider, self.age):
            torch.nn.init.normal_(table.weight, std=0.05)

    def forward(
        self, item: torch.Tensor, category: torch.Tensor, provider: torch.Tensor, age: torch.Tensor
    ) -> torch.Tensor:
        parts = torch.cat([self.item(item), self.category(category), self.provider(provider), self.age(age)], dim=-1)
        return F.normalize(self.mlp(parts), dim=-1)


class UserTower(torch.nn.Module):
    def __init__(self, num_users: int, dim: int) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(num_users + 1, dim, sparse=True)  # row 0: unknown user
        self.country = torch.nn.Embedding(NUM_COUNTRY_SLOTS, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(3 * dim + 1, 2 * dim), torch.nn.ReLU(), torch.nn.Linear(2 * dim, dim)
        )
        torch.nn.init.normal_(self.user.weight, std=0.05)
        torch.nn.init.normal_(self.country.weight, std=0.05)

    def forward(
        self, user: torch.Tensor, history: torch.Tensor, has_history: torch.Tensor, country: torch.Tensor
    ) -> torch.Tensor:
        """user [B] int64 (0 = unknown), history [B, dim] mean item vector, has_history [B, 1], country [B]."""
        parts = torch.cat([self.user(user), history, has_history, self.country(country)], dim=-1)
        return F.normalize(self.mlp(parts), dim=-1)
