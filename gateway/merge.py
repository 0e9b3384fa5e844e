"""Merging retrieval shards and sources into one candidate list."""

from __future__ import annotations

from collections.abc import Iterable

from funnel.v1 import common_pb2, retrieval_pb2

SOURCE_ANN = "ann"


def merge_candidates(
    responses: Iterable[retrieval_pb2.RetrieveResponse], ann_k: int, other_k: int
) -> list[common_pb2.Candidate]:
    """ANN hits of every shard by score (the same top-k one index over all items would give),
    then the best of the other sources; an item found twice keeps its first (ANN) entry."""
    ann: list[common_pb2.Candidate] = []
    others: list[common_pb2.Candidate] = []
    for response in responses:
        for candidate in response.candidates:
            (ann if candidate.source == SOURCE_ANN else others).append(candidate)
    ann.sort(key=lambda c: -c.score)
    others.sort(key=lambda c: -c.score)
    merged: list[common_pb2.Candidate] = []
    seen: set[str] = set()
    for pool, limit in ((ann, ann_k), (others, other_k)):
        taken = 0
        for candidate in pool:
            if taken == limit:
                break
            if candidate.item_id not in seen:
                seen.add(candidate.item_id)
                merged.append(candidate)
                taken += 1
    return merged
