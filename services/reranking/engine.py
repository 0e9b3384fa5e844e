"""The policy engine: content policy and exclusions first, then the configured rules, then top-N."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.content import ContentFilter, exclusion_mask
from funnel.policy.document import PolicyDocument
from funnel.v1 import common_pb2
from services.reranking.rules import Outcome, Slate, build_rules


@dataclass
class RerankResult:
    positions: np.ndarray  # input positions of the final list, in display order
    reports: list[tuple[str, Outcome]]
    slate: Slate


class PolicyEngine:
    def __init__(self, catalog: Catalog, users: Users, policy: PolicyDocument) -> None:
        self.catalog = catalog
        self.users = users
        self.policy = policy
        self.content = ContentFilter(catalog, policy.content)
        self.rules = build_rules(policy.rules, catalog, users)

    @property
    def version(self) -> str:
        return self.policy.version

    def run(
        self,
        user_id: str,
        item_ids: list[str],
        scores: np.ndarray,
        context: common_pb2.Context,
        exclude_item_ids: set[str],
        num_results: int,
    ) -> RerankResult:
        ids = np.asarray(item_ids, dtype=str)
        rows = self.catalog.index.rows(ids)
        order = np.argsort(-scores, kind="stable")
        slate = Slate(ids, rows, scores, order, self.users.index.row(user_id))
        reports: list[tuple[str, Outcome]] = []

        verdict = self.content.apply(rows[slate.order], context)
        blocked = ~verdict.keep
        reasons = [verdict.reasons.get(i, "") for i in range(len(slate.order))]
        for position, reason in zip(slate.order[blocked], np.asarray(reasons, dtype=object)[blocked], strict=True):
            slate.removed[int(position)] = f"{self.content.name}: {reason}"
        slate.order = slate.order[~blocked]
        reports.append((self.content.name, Outcome(removed=int(blocked.sum()))))

        excluded = exclusion_mask(list(slate.item_ids[slate.order]), exclude_item_ids)
        reports.append(
            ("exclude_requested", Outcome(removed=slate.drop(excluded, "exclude_requested", "excluded by the request")))
        )

        for rule in self.rules:
            reports.append((rule.name, rule.apply(slate)))

        cut = max(0, len(slate.order) - num_results)
        final = slate.order[:num_results]
        reports.append(("truncate", Outcome(removed=cut)))
        return RerankResult(final, reports, slate)
