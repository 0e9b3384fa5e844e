"""Item-to-item co-visitation: for each item, the items people interacted with close to it in their
sequences, as a sparse neighbour table (never a dense items x items matrix).

The table is built by training (`training/covisitation.py`) and read by both the retrieval source
that finds candidates with it and the ranker feature that scores them, through `scores`, so the
two never disagree on what "co-visited with your latest items" means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.artifacts.store import load_array, save_array

NAME = "covisitation"
# Scores are accumulated in a dense vector when the catalog is at most this many times the number of
# neighbours looked up, else by sorting the neighbours.
_DENSE_FACTOR = 32


@dataclass
class CoVisitation:
    indptr: np.ndarray  # int64 [items + 1] CSR row pointers
    neighbours: np.ndarray  # int32 item rows, best first within each row
    weights: np.ndarray  # float32, normalised co-visitation strength
    seeds: int = 20  # how many of the user's latest items seed a lookup
    recency_decay: float = 0.1  # a seed's weight is exp(-decay x how many items came after it)

    def row(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.indptr[item]), int(self.indptr[item + 1])
        return self.neighbours[start:end], self.weights[start:end]

    def scores(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every item co-visited with the latest `seeds` items of `history` (oldest first), and its
        score: the recency-weighted sum of its co-visitation with each seed. Items sorted by row."""
        recent = np.asarray(history[-self.seeds :], dtype=np.int64)
        if len(recent) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        seed_weight = np.exp(-self.recency_decay * np.arange(len(recent) - 1, -1, -1, dtype=np.float32))
        starts, ends = self.indptr[recent], self.indptr[recent + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        # Positions of every seed's neighbours, concatenated without a Python loop.
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        positions = offsets + np.arange(total)
        neighbours = self.neighbours[positions]
        weights = self.weights[positions] * np.repeat(seed_weight, lengths)
        items_in_catalog = len(self.indptr) - 1
        if items_in_catalog <= _DENSE_FACTOR * total:
            # A small catalog: one pass over a dense vector beats sorting the neighbours. Either way
            # each item's weights are summed in the same order, so the values are the same floats.
            present = np.zeros(items_in_catalog, dtype=bool)
            present[neighbours] = True
            items = np.flatnonzero(present)
            values = np.bincount(neighbours, weights=weights, minlength=items_in_catalog)[items]
        else:
            items, inverse = np.unique(neighbours, return_inverse=True)
            values = np.bincount(inverse, weights=weights)
        return items.astype(np.int64), values.astype(np.float32)

    def save(self, directory: Path) -> None:
        for name in ("indptr", "neighbours", "weights"):
            save_array(directory, f"{NAME}_{name}", getattr(self, name))
        (directory / f"{NAME}.json").write_text(json.dumps({"seeds": self.seeds, "recency_decay": self.recency_decay}))

    @classmethod
    def load(cls, directory: Path, mmap: bool = False) -> CoVisitation:
        settings = json.loads((directory / f"{NAME}.json").read_text())
        arrays = {name: load_array(directory, f"{NAME}_{name}", mmap) for name in ("indptr", "neighbours", "weights")}
        return cls(**arrays, **settings)


def score_of(items: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The value of each of `rows` in a sparse (sorted `items`, `values`) vector; 0 where absent."""
    if len(items) == 0:
        return np.zeros(len(rows), dtype=np.float32)
    position = np.searchsorted(items, rows).clip(0, len(items) - 1)
    return np.where(items[position] == rows, values[position], 0.0).astype(np.float32)
