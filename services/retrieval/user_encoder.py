"""The user tower at serving time: the user's latest items (stored + session) and country -> query vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class UserEncoder:
    def __init__(self, tower_path: Path, item_vectors: np.ndarray, history_length: int) -> None:
        self.tower = torch.jit.load(str(tower_path), map_location="cpu").eval()
        self.item_vectors = item_vectors
        self.history_length = history_length
        self._user = torch.zeros(1, dtype=torch.int64)  # the served tower reads no user id

    def encode(self, history: np.ndarray, country_slot: int) -> np.ndarray:
        """float32 [1, dim] from `history` (item rows, oldest first) and a country slot (0 = unknown)."""
        recent = np.asarray(history[-self.history_length :], dtype=np.int64)[::-1]
        dim = self.item_vectors.shape[1]
        vectors = np.zeros((1, self.history_length, dim), dtype=np.float32)
        mask = np.zeros((1, self.history_length), dtype=np.float32)
        vectors[0, : len(recent)] = self.item_vectors[recent]
        mask[0, : len(recent)] = 1.0
        with torch.inference_mode():
            vector = self.tower(
                self._user, torch.from_numpy(vectors), torch.from_numpy(mask), torch.tensor([country_slot])
            )
        return vector.numpy().astype(np.float32)
