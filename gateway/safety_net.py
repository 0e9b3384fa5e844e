"""What the gateway does on its own when a stage cannot: fallback candidates and content policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.artifacts.store import ArtifactError, latest_version, read_manifest
from funnel.policy.content import ContentFilter, exclusion_mask
from funnel.policy.document import PolicyDocument
from funnel.sources import FALLBACK_POPULAR
from funnel.v1 import common_pb2, recommender_pb2


class SafetyNet:
    def __init__(self, artifact_dir: Path, policy: PolicyDocument, fallback_count: int) -> None:
        bundle = latest_version(artifact_dir / "bundles")
        if bundle is None:
            raise ArtifactError(f"no bundle under {artifact_dir / 'bundles'}")
        self.version = read_manifest(bundle, verify=False)["version"]
        catalog = Catalog.load(bundle)
        self.catalog = catalog
        self.users = Users.load(bundle)
        self.policy = policy
        self.content = ContentFilter(catalog, policy.content)
        # Consumed items stay out of a fallback answer exactly when the policy keeps them out.
        self.exclude_consumed = any(rule.name == "exclude_consumed" for rule in policy.rules)
        top = np.argsort(-catalog.popularity, kind="stable")[:fallback_count]
        score = np.log1p(catalog.popularity[top])
        self._fallback = [
            common_pb2.Candidate(item_id=str(catalog.item_ids[row]), score=float(s), source=FALLBACK_POPULAR)
            for row, s in zip(top, score, strict=True)
        ]

    def consumed(self, user_id: str, recent_item_ids: list[str]) -> set[str]:
        """The items a user interacted with (stored history and this session), if the policy hides them."""
        if not self.exclude_consumed:
            return set()
        row = self.users.index.row(user_id)
        stored = self.catalog.item_ids[self.users.history(row)].tolist() if row >= 0 else []
        return {*stored, *recent_item_ids}

    def fallback_candidates(self, user_id: str, exclude: set[str]) -> list[common_pb2.Candidate]:
        hidden = exclude | self.consumed(user_id, [])
        return [c for c in self._fallback if c.item_id not in hidden]

    def enforce(
        self, candidates: list[common_pb2.Candidate], request: recommender_pb2.RecommendRequest, exclude: set[str]
    ) -> list[common_pb2.Candidate]:
        """Content policy, the request's exclusions, consumed items and dedupe, then top-N."""
        ids = [c.item_id for c in candidates]
        verdict = self.content.apply(self.catalog.index.rows(ids), request.context)
        hidden = exclude | self.consumed(request.user_id, list(request.recent_item_ids))
        keep = verdict.keep & ~exclusion_mask(ids, hidden)
        limit = request.num_results
        out: list[common_pb2.Candidate] = []
        seen: set[str] = set()
        for candidate, allowed in zip(candidates, keep, strict=True):
            if allowed and candidate.item_id not in seen:
                seen.add(candidate.item_id)
                out.append(candidate)
                if len(out) == limit:
                    break
        return out
