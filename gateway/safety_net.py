"""What the gateway does on its own when a stage cannot: fallback candidates and content policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import Catalog
from funnel.artifacts.store import ArtifactError, latest_version, read_manifest
from funnel.policy.content import ContentFilter, exclusion_mask
from funnel.policy.document import PolicyDocument
from funnel.v1 import common_pb2

SOURCE_FALLBACK = "fallback_popular"


class SafetyNet:
    def __init__(self, artifact_dir: Path, policy: PolicyDocument, fallback_count: int) -> None:
        bundle = latest_version(artifact_dir / "bundles")
        if bundle is None:
            raise ArtifactError(f"no bundle under {artifact_dir / 'bundles'}")
        self.version = read_manifest(bundle, verify=False)["version"]
        catalog = Catalog.load(bundle)
        self.catalog = catalog
        self.policy = policy
        self.content = ContentFilter(catalog, policy.content)
        top = np.argsort(-catalog.popularity, kind="stable")[:fallback_count]
        score = np.log1p(catalog.popularity[top])
        self._fallback = [
            common_pb2.Candidate(item_id=str(catalog.item_ids[row]), score=float(s), source=SOURCE_FALLBACK)
            for row, s in zip(top, score, strict=True)
        ]

    def fallback_candidates(self, exclude: set[str]) -> list[common_pb2.Candidate]:
        return [c for c in self._fallback if c.item_id not in exclude]

    def enforce(
        self, candidates: list[common_pb2.Candidate], context: common_pb2.Context, exclude: set[str], limit: int
    ) -> list[common_pb2.Candidate]:
        """Content policy, the request's exclusions and dedupe, in the given order, then top-N."""
        ids = [c.item_id for c in candidates]
        verdict = self.content.apply(self.catalog.index.rows(ids), context)
        keep = verdict.keep & ~exclusion_mask(ids, exclude)
        out: list[common_pb2.Candidate] = []
        seen: set[str] = set()
        for candidate, allowed in zip(candidates, keep, strict=True):
            if allowed and candidate.item_id not in seen:
                seen.add(candidate.item_id)
                out.append(candidate)
                if len(out) == limit:
                    break
        return out
