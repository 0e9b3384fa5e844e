"""Merging retrieval shards and candidate sources into one candidate list."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from funnel.v1 import common_pb2, retrieval_pb2


def merge_candidates(
    responses: Iterable[retrieval_pb2.RetrieveResponse], limits: dict[str, int]
) -> list[common_pb2.Candidate]:
    """Each source's hits from every shard, best first by that source's score, cut to its limit:
    for the ANN source exactly the top-k one index over every item would give. Sources are taken
    in the order of `limits`; an item found twice keeps its first entry."""
    by_source: dict[str, list[common_pb2.Candidate]] = defaultdict(list)
    for response in responses:
        for candidate in response.candidates:
            by_source[candidate.source].append(candidate)
    merged: list[common_pb2.Candidate] = []
    seen: set[str] = set()
    for source, limit in limits.items():
        pool = sorted(by_source.get(source, ()), key=lambda c: -c.score)
        taken = 0
        for candidate in pool:
            if taken == limit:
                break
            if candidate.item_id not in seen:
                seen.add(candidate.item_id)
                merged.append(candidate)
                taken += 1
    return merged
