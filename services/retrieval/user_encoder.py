"""The user tower at serving time: the user's latest items (stored + session) and country -> query vector.

The bundle's TorchScript file is the contract. For one user at a time, the same network computed
with numpy on the user's own rows costs tens of microseconds where the TorchScript call costs
several hundred (a dozen torch ops, each with its dispatch overhead, over a padded batch). The
numpy path is used only when it reproduces the TorchScript output on probe histories at load time;
a tower of another shape is served by TorchScript, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("funnel.retrieval")
_AGREEMENT = 1e-4  # largest difference from TorchScript, per coordinate of a unit vector
_WEIGHTS = (
    "use_user_id", "sequence_aware", "user.weight", "country.weight", "position.weight",
    "attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias",
    "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
)  # fmt: skip


class NumpyUserTower:
    """The two-tower model's user tower (training/towers.py UserTower) for one user, unpadded."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        w = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in _WEIGHTS}
        self.user = w["user.weight"][0]  # the served tower reads no user id: every user is row 0
        self.country = w["country.weight"]
        self.position = w["position.weight"]
        self.attention_in = w["attention.0.weight"].T.copy()
        self.attention_in_bias = w["attention.0.bias"]
        self.attention_out = w["attention.2.weight"][0]
        self.attention_out_bias = float(w["attention.2.bias"][0])
        self.hidden = w["mlp.0.weight"].T.copy()
        self.hidden_bias = w["mlp.0.bias"]
        self.out = w["mlp.2.weight"].T.copy()
        self.out_bias = w["mlp.2.bias"]
        self.sequence_aware = float(np.asarray(weights["sequence_aware"]).reshape(()))

    @classmethod
    def from_torchscript(cls, module: torch.jit.ScriptModule) -> NumpyUserTower | None:
        state = module.state_dict()
        if set(state) != set(_WEIGHTS):
            return None
        return cls({name: value.detach().numpy() for name, value in state.items()})

    def __call__(self, vectors: np.ndarray, country_slot: int) -> np.ndarray:
        """`vectors` [n, dim] the user's item vectors, latest first (n may be 0) -> float32 [1, dim]."""
        n, dim = vectors.shape
        if n:
            mean = vectors.sum(axis=0) / n
            positioned = vectors + self.position[:n]
            logits = np.tanh(positioned @ self.attention_in + self.attention_in_bias) @ self.attention_out
            logits += self.attention_out_bias
            weights = np.exp(logits - logits.max())
            weights /= weights.sum()
            attended = (weights @ vectors) / max(float(weights.sum()), 1e-6)
            latest = vectors[0]
        else:
            mean = attended = latest = np.zeros(dim, dtype=np.float32)
        s = self.sequence_aware
        if s != 1.0:  # the plain-pooling ablation
            latest = latest * s + mean * (1.0 - s)
            attended = attended * s + mean * (1.0 - s)
        has_history = np.array([1.0 if n else 0.0], dtype=np.float32)
        parts = np.concatenate([self.user, attended, mean, latest, has_history, self.country[country_slot]])
        hidden = np.maximum(parts @ self.hidden + self.hidden_bias, 0.0)
        vector = hidden @ self.out + self.out_bias
        vector /= max(float(np.sqrt(vector @ vector)), 1e-12)
        return vector.astype(np.float32, copy=False)[None, :]


class UserEncoder:
    def __init__(self, tower_path: Path, item_vectors: np.ndarray, history_length: int) -> None:
        self.tower = torch.jit.load(str(tower_path), map_location="cpu").eval()
        self.item_vectors = item_vectors
        self.history_length = history_length
        self._user = torch.zeros(1, dtype=torch.int64)  # the served tower reads no user id
        self.fast = NumpyUserTower.from_torchscript(self.tower)
        if self.fast is not None and not self._fast_agrees():
            log.warning("the numpy user tower disagrees with the bundle's TorchScript; serving TorchScript")
            self.fast = None

    def encode(self, history: np.ndarray, country_slot: int) -> np.ndarray:
        """float32 [1, dim] from `history` (item rows, oldest first) and a country slot (0 = unknown)."""
        recent = np.asarray(history[-self.history_length :], dtype=np.int64)[::-1]
        if self.fast is not None:
            return self.fast(self.item_vectors[recent].astype(np.float32, copy=False), country_slot)
        return self.encode_torchscript(recent, country_slot)

    def encode_torchscript(self, recent: np.ndarray, country_slot: int) -> np.ndarray:
        """The bundle's TorchScript tower on `recent` (item rows, latest first)."""
        dim = self.item_vectors.shape[1]
        # As long as the history, not the tower's longest: padding changes no output (it is masked)
        # and the sequence tower's attention grows with the square of it.
        width = max(1, len(recent))
        vectors = np.zeros((1, width, dim), dtype=np.float32)
        mask = np.zeros((1, width), dtype=np.float32)
        vectors[0, : len(recent)] = self.item_vectors[recent]
        mask[0, : len(recent)] = 1.0
        with torch.inference_mode():
            vector = self.tower(
                self._user, torch.from_numpy(vectors), torch.from_numpy(mask), torch.tensor([country_slot])
            )
        return vector.numpy().astype(np.float32)

    def _fast_agrees(self) -> bool:
        """The numpy tower against TorchScript on histories of every length class (none, one,
        partial, full) and every country slot."""
        assert self.fast is not None
        rng = np.random.default_rng(0)
        items = len(self.item_vectors)
        slots = len(self.fast.country)
        for length in (0, 1, self.history_length // 2, self.history_length):
            recent = rng.integers(0, items, min(length, items))
            for slot in range(slots):
                fast = self.fast(self.item_vectors[recent].astype(np.float32, copy=False), slot)
                if np.abs(fast - self.encode_torchscript(recent, slot)).max() > _AGREEMENT:
                    return False
        return True
