"""When items were interacted with: popularity as of any moment, and when each item first appeared.

Popularity changes over time (MovieLens spans 22 years): what was popular around a user's latest
activity says more about their next step than all-time counts. Each interaction is kept as one
sorted int64 key (item, time), so the count of an item's interactions in any window is two binary
searches, for hundreds of candidates at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funnel.artifacts.store import load_array, save_array

NAME = "activity"
_SHIFT = np.int64(1 << 32)  # time offsets from `origin` fit in 32 bits (136 years of seconds)


@dataclass
class ItemActivity:
    keys: np.ndarray  # int64 sorted: item * 2^32 + (timestamp - origin)
    first_seen: np.ndarray  # int64 seconds of each item's first interaction, -1 for none
    origin: int  # the earliest timestamp
    latest: int  # the latest timestamp: the reference time of a user without history

    @classmethod
    def from_interactions(cls, item: np.ndarray, timestamp: np.ndarray, num_items: int) -> ItemActivity:
        timestamp = np.asarray(timestamp, dtype=np.int64)
        origin = int(timestamp.min()) if len(timestamp) else 0
        keys = np.sort(np.asarray(item, dtype=np.int64) * _SHIFT + (timestamp - origin))
        first_seen = np.full(num_items, -1, dtype=np.int64)
        if len(keys):
            items = keys // _SHIFT
            starts = np.flatnonzero(np.diff(items, prepend=-1))
            first_seen[items[starts]] = keys[starts] % _SHIFT + origin
        return cls(keys, first_seen, origin, int(timestamp.max()) if len(timestamp) else 0)

    def window_counts(self, rows: np.ndarray, before: int, windows_s: tuple[int, ...]) -> list[np.ndarray]:
        """Interactions with each of `rows` in each window of `windows_s` seconds before `before`
        (exclusive). The window end is searched once, and the rows in sorted order, where each
        binary search starts close to where the last one ended."""
        order = np.argsort(rows, kind="stable")
        keys = np.asarray(rows, dtype=np.int64)[order] * _SHIFT
        end = np.searchsorted(self.keys, keys + np.clip(before - self.origin, 0, _SHIFT - 1))
        out = []
        for window_s in windows_s:
            start = np.searchsorted(self.keys, keys + np.clip(before - window_s - self.origin, 0, _SHIFT - 1))
            counts = np.empty(len(order), dtype=np.float32)
            counts[order] = end - start
            out.append(counts)
        return out

    def save(self, directory: Path) -> None:
        save_array(directory, f"{NAME}_keys", self.keys)
        save_array(directory, f"{NAME}_first_seen", self.first_seen)
        (directory / f"{NAME}.json").write_text(json.dumps({"origin": self.origin, "latest": self.latest}))

    @classmethod
    def load(cls, directory: Path, mmap: bool = False) -> ItemActivity:
        times = json.loads((directory / f"{NAME}.json").read_text())
        return cls(load_array(directory, f"{NAME}_keys", mmap), load_array(directory, f"{NAME}_first_seen"), **times)
