"""What the gateway does on its own when a stage cannot: fallback candidates and content policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.artifacts.store import ArtifactError, latest_version, read_manifest
from funnel.candidates import Candidates
from funnel.policy.content import ContentFilter
from funnel.policy.document import PolicyDocument
from funnel.sources import FALLBACK_POPULAR, SOURCE_CODES
from funnel.v1 import common_pb2


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
        self._fallback = Candidates(
            catalog.item_ids[top].tolist(),
            np.full(len(top), SOURCE_CODES[FALLBACK_POPULAR], dtype=np.int32),
            np.log1p(catalog.popularity[top]).astype(np.float32),
            rows=top.astype(np.int64),
            catalog_version=self.version,
        )

    def consumed(self, user_id: str, recent_item_ids: Sequence[str]) -> set[str]:
        """The items a user interacted with (stored history and this session), if the policy hides them."""
        if not self.exclude_consumed:
            return set()
        row = self.users.index.row(user_id)
        stored = self.catalog.item_ids[self.users.history(row)].tolist() if row >= 0 else []
        return {*stored, *recent_item_ids}

    def fallback_candidates(self, user_id: str, exclude: set[str]) -> Candidates:
        hidden = exclude | self.consumed(user_id, [])
        keep = [n for n, item in enumerate(self._fallback.item_ids) if item not in hidden]
        return self._fallback.take(keep)

    def enforce(
        self,
        candidates: Candidates,
        user_id: str,
        context: common_pb2.Context,
        num_results: int,
        exclude: set[str],
        recent_item_ids: Sequence[str],
    ) -> Candidates:
        """Content policy, the request's exclusions, consumed items and dedupe, then the top N in the
        candidates' order (best first)."""
        ids = candidates.item_ids
        keep = self.content.allowed(candidates.rows_in(self.catalog.index, self.version), context)
        hidden = exclude | self.consumed(user_id, recent_item_ids)
        chosen: list[int] = []
        seen: set[str] = set()
        for position, (item, allowed) in enumerate(zip(ids, keep.tolist(), strict=True)):
            if allowed and item not in hidden and item not in seen:
                seen.add(item)
                chosen.append(position)
                if len(chosen) == num_results:
                    break
        return candidates.take(chosen)
