"""The user tower at serving time: stored history + session items + country -> query vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from funnel.artifacts.catalog import Users
from funnel.features import country_slot


class UserEncoder:
    def __init__(self, tower_path: Path, item_vectors: np.ndarray, users: Users, history_length: int) -> None:
        self.tower = torch.jit.load(str(tower_path), map_location="cpu").eval()
        self.item_vectors = item_vectors
        self.users = users
        self.history_length = history_length

    def encode(self, user_row: int, recent_rows: np.ndarray, country: str) -> np.ndarray:
        """float32 [1, dim]; user_row -1 = a user without an id embedding (cold)."""
        stored = self.users.history(user_row) if user_row >= 0 else np.zeros(0, dtype=np.int64)
        history = np.concatenate([stored, recent_rows])[-self.history_length :]
        dim = self.item_vectors.shape[1]
        pooled = self.item_vectors[history].mean(axis=0) if len(history) else np.zeros(dim, dtype=np.float32)
        slot = country_slot(country)
        if slot == 0 and user_row >= 0:  # no country in the request: the user's home country
            slot = int(self.users.country[user_row]) + 1
        with torch.inference_mode():
            vector = self.tower(
                torch.tensor([user_row + 1], dtype=torch.int64),
                torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32)).unsqueeze(0),
                torch.tensor([[1.0 if len(history) else 0.0]]),
                torch.tensor([slot], dtype=torch.int64),
            )
        return vector.numpy().astype(np.float32)
