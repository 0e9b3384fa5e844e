"""Merging retrieval shards and candidate sources into one candidate list, column by column."""

from __future__ import annotations

import numpy as np

from funnel.candidates import Candidates
from funnel.fusion import fuse_columns
from funnel.sources import SOURCE_CODES


def merge_candidates(shards: list[Candidates], limits: dict[str, int]) -> Candidates:
    """Each source's hits from every shard, best first by that source's score, cut to its limit
    (for the ANN source exactly the top-k one index over every item would give); then the sources
    fused by rank (`funnel.fusion`). Scores are the fused scores, sources the one that ranked each
    item best."""
    ranked: dict[str, list[str]] = {}
    for source, limit in limits.items():
        code = SOURCE_CODES[source]
        ids: list[str] = []
        scores: list[np.ndarray] = []
        for shard in shards:
            where = np.flatnonzero(shard.sources == code)
            ids.extend(shard.item_ids[n] for n in where.tolist())
            scores.append(shard.retrieval_scores[where])
        order = np.argsort(-np.concatenate(scores), kind="stable") if scores else np.zeros(0, dtype=np.int64)
        # dict.fromkeys keeps the first (best) of any repeat, in order.
        ranked[source] = list(dict.fromkeys([ids[n] for n in order.tolist()]))[:limit]
    item_ids, fused, best = fuse_columns(ranked)
    codes = np.array([SOURCE_CODES[source] for source in ranked], dtype=np.int32)
    return Candidates(item_ids, codes[best] if len(codes) else best.astype(np.int32), fused.astype(np.float32))
