"""The catalog and user tables of a bundle, as column arrays, with vectorised id lookup."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from funnel.artifacts.store import load_array, save_array

# Region availability is a bitmask over this list; an item available everywhere has every bit set.
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
WORLDWIDE = np.int64(-1)
MATURITY_NAMES = ("", "G", "PG", "PG13", "R", "NC17")


class IdIndex:
    """Maps external string ids to row numbers: one hash lookup per id, no string array built."""

    def __init__(self, ids: np.ndarray) -> None:
        self._rows: dict[str, int] = {}
        for row, key in enumerate(ids.tolist()):
            self._rows.setdefault(key, row)  # the first row of a repeated id, as a stable sort found it

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each id, -1 where the id is unknown."""
        keys = ids.tolist() if isinstance(ids, np.ndarray) else ids
        return np.fromiter(map(self._rows.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))

    def row(self, item_id: str) -> int:
        return self._rows.get(item_id, -1)


def country_bit(country: str) -> np.int64:
    """The region bit of a country; unknown or empty countries match only worldwide items."""
    return np.int64(1) << np.int64(COUNTRIES.index(country)) if country in COUNTRIES else np.int64(0)


@dataclass
class Catalog:
    item_ids: np.ndarray
    category: np.ndarray  # int32 row -> category index
    provider: np.ndarray  # int32 row -> provider index
    maturity: np.ndarray  # int8, 1 (G) .. 5 (NC17)
    region_mask: np.ndarray  # int64 bitmask over COUNTRIES
    age_days: np.ndarray  # float32
    popularity: np.ndarray  # float32 interaction count in the training split
    category_names: list[str]
    provider_names: list[str]

    def __post_init__(self) -> None:
        self.index = IdIndex(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def save(self, directory: Path) -> None:
        for name in ("item_ids", "category", "provider", "maturity", "region_mask", "age_days", "popularity"):
            save_array(directory, f"items_{name}", getattr(self, name))
        (directory / "names.json").write_text(
            json.dumps({"categories": self.category_names, "providers": self.provider_names, "countries": COUNTRIES})
        )

    @classmethod
    def load(cls, directory: Path) -> Catalog:
        names = json.loads((directory / "names.json").read_text())
        columns = {
            name: load_array(directory, f"items_{name}")
            for name in ("item_ids", "category", "provider", "maturity", "region_mask", "age_days", "popularity")
        }
        return cls(**columns, category_names=names["categories"], provider_names=names["providers"])


USER_COLUMNS = ("user_ids", "history_indptr", "history_items", "history_times", "country")


@dataclass
class Users:
    """Every interaction each user had, oldest first: the history the funnel serves from."""

    user_ids: np.ndarray
    history_indptr: np.ndarray  # int64 CSR row pointers into history_items
    history_items: np.ndarray  # int32 item rows, oldest first
    history_times: np.ndarray  # int64 seconds, one per history item
    country: np.ndarray  # int8 index into COUNTRIES: the user's home country

    def __post_init__(self) -> None:
        self.index = IdIndex(self.user_ids)

    def __len__(self) -> int:
        return len(self.user_ids)

    def history(self, user_row: int) -> np.ndarray:
        return self.history_items[self.history_indptr[user_row] : self.history_indptr[user_row + 1]]

    def times(self, user_row: int) -> np.ndarray:
        return self.history_times[self.history_indptr[user_row] : self.history_indptr[user_row + 1]]

    def save(self, directory: Path) -> None:
        for name in USER_COLUMNS:
            save_array(directory, f"users_{name}", getattr(self, name))

    @classmethod
    def load(cls, directory: Path) -> Users:
        return cls(**{name: load_array(directory, f"users_{name}") for name in USER_COLUMNS})


@dataclass
class Embeddings:
    """Unit-norm user and item vectors in one space; inner product is the retrieval score."""

    users: np.ndarray  # float32 [users, dim]
    items: np.ndarray  # float32 [items, dim]

    def save(self, directory: Path) -> None:
        save_array(directory, "user_embeddings", self.users)
        save_array(directory, "item_embeddings", self.items)

    @classmethod
    def load(cls, directory: Path, mmap: bool = False) -> Embeddings:
        """`mmap` shares the pages between every process on a node that serves the same bundle."""
        return cls(load_array(directory, "user_embeddings", mmap), load_array(directory, "item_embeddings", mmap))
