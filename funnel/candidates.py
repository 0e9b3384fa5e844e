"""A candidate list as columns: the in-process form of `funnel.v2.CandidateList`, and its checks.

Every stage reads the message into numpy columns once and writes it from them once: no message per
candidate, no per-candidate map, nothing converted twice. A column that is neither empty nor as
long as `item_ids` is refused with INVALID_ARGUMENT naming it, before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.runtime.errors import InvalidArgument
from funnel.sources import SOURCE_CODES
from funnel.v2 import candidates_pb2
from funnel.validation import MAX_ID_LENGTH

_KNOWN_SOURCES = max(SOURCE_CODES.values())


@dataclass
class Candidates:
    item_ids: list[str]
    sources: np.ndarray  # int32 SOURCE_CODES, one per item
    retrieval_scores: np.ndarray  # float32, one per item
    ranking_scores: np.ndarray | None = None  # float32, one per item once ranking scored the list

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def empty(cls) -> Candidates:
        return cls([], np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))

    @property
    def scores(self) -> np.ndarray:
        """The latest stage's scores: the ranker's when it scored the list, else retrieval's."""
        return self.retrieval_scores if self.ranking_scores is None else self.ranking_scores

    def take(self, positions: np.ndarray | list[int]) -> Candidates:
        """The candidates at `positions`, in that order."""
        ids = self.item_ids
        return Candidates(
            [ids[p] for p in positions.tolist()] if isinstance(positions, np.ndarray) else [ids[p] for p in positions],
            self.sources[positions],
            self.retrieval_scores[positions],
            None if self.ranking_scores is None else self.ranking_scores[positions],
        )

    def extended(self, item_ids: list[str], source: int) -> Candidates:
        """These candidates followed by `item_ids`, all from `source`, with zero scores."""
        zeros = np.zeros(len(item_ids), dtype=np.float32)
        return Candidates(
            self.item_ids + item_ids,
            np.concatenate([self.sources, np.full(len(item_ids), source, dtype=np.int32)]),
            np.concatenate([self.retrieval_scores, zeros]),
            None if self.ranking_scores is None else np.concatenate([self.ranking_scores, zeros]),
        )

    def write(self, message: candidates_pb2.CandidateList) -> candidates_pb2.CandidateList:
        """Fill `message` (empty) with every column; returns it."""
        message.item_ids.extend(self.item_ids)
        # Plain lists: upb copies them in one C loop, where numpy scalars go one call at a time.
        message.sources.extend(self.sources.tolist())
        message.retrieval_scores.extend(self.retrieval_scores.tolist())
        if self.ranking_scores is not None:
            message.ranking_scores.extend(self.ranking_scores.tolist())
        return message

    def to_message(self) -> candidates_pb2.CandidateList:
        return self.write(candidates_pb2.CandidateList())

    @classmethod
    def read(cls, message: candidates_pb2.CandidateList, field: str = "candidates") -> Candidates:
        """The columns of `message`; a missing sources or retrieval_scores column reads as unknown
        (0) for each item. Raises InvalidArgument naming `field`'s bad column."""
        item_ids = message.item_ids[:]
        count = len(item_ids)
        for name in ("sources", "retrieval_scores", "ranking_scores"):
            length = len(getattr(message, name))
            if length not in (0, count):
                raise InvalidArgument(f"{field}.{name} has {length} entries, {field}.item_ids {count}: each column "
                                      f"must be empty or as long as item_ids")  # fmt: skip
        sources = np.array(message.sources[:], dtype=np.int32) if message.sources else np.zeros(count, np.int32)
        if count and message.sources and (sources.min() < 0 or sources.max() > _KNOWN_SOURCES):
            raise InvalidArgument(f"{field}.sources holds an unknown CandidateSource")
        retrieval = _floats(message.retrieval_scores, count, f"{field}.retrieval_scores")
        ranking = _floats(message.ranking_scores, count, f"{field}.ranking_scores") if message.ranking_scores else None
        return cls(item_ids, sources, retrieval, ranking)


def _floats(column: object, count: int, what: str) -> np.ndarray:
    if not column:
        return np.zeros(count, dtype=np.float32)
    values = np.array(column[:], dtype=np.float32)  # type: ignore[index]
    if not np.isfinite(values).all():
        raise InvalidArgument(f"{what} holds a non-finite value")
    return values


def check_item_ids(item_ids: list[str], what: str) -> None:
    """Every id non-empty, printable and at most MAX_ID_LENGTH characters (one pass, no per-id call)."""
    if not item_ids:
        return
    if min(map(len, item_ids)) == 0:
        raise InvalidArgument(f"{what} holds an empty id")
    if max(map(len, item_ids)) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{what} holds an id longer than {MAX_ID_LENGTH} characters")
    if not "".join(item_ids).isprintable():
        raise InvalidArgument(f"{what} holds an id with non-printable characters")
