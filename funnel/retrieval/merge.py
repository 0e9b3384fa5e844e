"""Merging retrieval shards and candidate sources into one candidate list, column by column."""

from __future__ import annotations

import numpy as np

from funnel.candidates import Candidates, pick
from funnel.fusion import fuse_columns
from funnel.sources import SOURCE_CODES


def merge_candidates(shards: list[Candidates], limits: dict[str, int]) -> Candidates:
    """Each source's hits from every shard, best first by that source's score, cut to its limit
    (for the ANN source exactly the top-k one index over every item would give); then the sources
    fused by rank (`funnel.fusion`). Scores are the fused scores, sources the one that ranked each
    item best. Catalog rows come along when every shard answered from the same bundle version."""
    names = list(limits)
    codes = np.array([SOURCE_CODES[name] for name in names], dtype=np.int32)
    item_ids = [item for shard in shards for item in shard.item_ids]
    sources = np.concatenate([shard.sources for shard in shards]) if shards else np.zeros(0, np.int32)
    scores = np.concatenate([shard.retrieval_scores for shard in shards]) if shards else np.zeros(0, np.float32)
    versions = {shard.catalog_version for shard in shards}
    carry_rows = len(versions) == 1 and all(shard.rows is not None or not len(shard) for shard in shards)
    # Each hit's place in `limits` (-1: a source not asked for); one stable sort groups the hits by
    # source and orders each group by its score, ties in shard order.
    place = np.full(max(int(sources.max(initial=0)), int(codes.max(initial=0))) + 1, -1, dtype=np.int64)
    place[codes] = np.arange(len(codes))
    group = place[sources]
    order = np.lexsort((-scores, group))
    order = order[group[order] >= 0]
    ends = np.searchsorted(group[order], np.arange(len(codes)), side="right")
    ranked_ids = pick(item_ids, order)
    ranked: dict[str, list[str]] = {}
    start = 0
    for name, end in zip(names, ends.tolist(), strict=True):
        # dict.fromkeys keeps the first (best) of any repeat, in order.
        ranked[name] = list(dict.fromkeys(ranked_ids[start:end]))[: limits[name]]
        start = end
    fused_ids, fused, best = fuse_columns(ranked)
    merged = Candidates(fused_ids, codes[best] if len(codes) else best.astype(np.int32), fused.astype(np.float32))
    if carry_rows and len(merged):
        rows = np.concatenate([shard.rows for shard in shards if shard.rows is not None])
        # Any hit of an item will do: in one bundle version every hit of it carries the same row.
        hit = dict(zip(item_ids, range(len(item_ids)), strict=True))
        merged.rows = rows[[hit[item] for item in fused_ids]]
        merged.catalog_version = versions.pop()
    return merged
