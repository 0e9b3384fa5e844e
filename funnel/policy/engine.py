"""The policy engine: content policy and the request's exclusions first, then the policy's rules
by phase (filters, scorers, reorderers, selectors, pins), then top-N."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from funnel.arrays import member_of
from funnel.artifacts.catalog import Catalog, Users
from funnel.policy.content import ContentFilter
from funnel.policy.document import PolicyDocument
from funnel.policy.registry import build_rules
from funnel.policy.rules import Outcome, Phase, Slate
from funnel.policy.selection import Pin, fill_top
from funnel.v1 import common_pb2


@dataclass
class RerankResult:
    positions: np.ndarray  # input positions of the final list, in display order (pins may add inputs)
    reports: list[tuple[str, Outcome]]
    slate: Slate


class PolicyEngine:
    def __init__(self, catalog: Catalog, users: Users, vectors: np.ndarray, policy: PolicyDocument) -> None:
        self.catalog = catalog
        self.users = users
        self.policy = policy
        self.content = ContentFilter(catalog, policy.content)
        self.rules = build_rules(policy.rules, catalog, users, vectors, policy.content)
        self.pinned = [item for rule in self.rules if isinstance(rule, Pin) for item in rule.positions]
        self.phased = {phase: [rule for rule in self.rules if rule.phase == phase] for phase in Phase}
        pinned_rows = [rule.rows for rule in self.rules if isinstance(rule, Pin)]
        self.pinned_rows = np.concatenate(pinned_rows) if pinned_rows else np.zeros(0, dtype=np.int64)

    @property
    def version(self) -> str:
        return self.policy.version

    def run(
        self,
        user_id: str,
        item_ids: list[str],
        scores: np.ndarray,
        context: common_pb2.Context,
        exclude_item_ids: Sequence[str],
        num_results: int,
        debug: bool = False,
        recent_item_ids: Sequence[str] = (),
        rows: np.ndarray | None = None,
    ) -> RerankResult:
        """`item_ids` and `scores` are the candidates (`rows` their catalog rows, when known); the
        result's positions index `item_ids` followed by the pinned items that were not among them."""
        # Pinned items join the candidates (below every real one) so they meet the same filters.
        if self.pinned:
            given = set(item_ids)
            extra = [item for item in self.pinned if item not in given]
        else:
            extra = []
        ids = list(item_ids) + extra if extra else list(item_ids)
        floor = float(scores.min()) - 1.0 if len(scores) else 0.0
        all_scores = np.concatenate([scores, np.full(len(extra), floor)]).astype(np.float32)
        if rows is None:
            rows = self.catalog.index.rows(ids)
        elif extra:
            rows = np.concatenate([rows, self.catalog.index.rows(extra)])
        order = np.argsort(-all_scores, kind="stable")
        session = self.catalog.index.rows(recent_item_ids)
        user_row = self.users.index.row(user_id)
        slate = Slate(ids, rows, all_scores, order, user_row, num_results, debug, session_rows=session[session >= 0])
        reports: list[tuple[str, Outcome]] = []

        verdict = self.content.apply(rows[slate.order], context)
        for position, reason in verdict.reasons.items():
            slate.removed[int(slate.order[position])] = f"{self.content.name}: {reason}"
        reports.append((self.content.name, Outcome(removed=int((~verdict.keep).sum()))))
        slate.order = slate.order[verdict.keep]
        # By catalog row: content policy, just applied, removed every id the catalog does not hold.
        excluded = member_of(slate.rows[slate.order], self.catalog.index.rows(exclude_item_ids))
        reports.append(
            ("exclude_requested", Outcome(removed=slate.drop(excluded, "exclude_requested", "excluded by the request")))
        )

        phased = self.phased
        for rule in phased[Phase.FILTER] + phased[Phase.SCORE] + phased[Phase.REORDER]:
            reports.append((rule.name, rule.apply(slate)))
        if phased[Phase.SELECT]:
            # Pinned items take their positions afterwards; the selection fills the other slots.
            pinned = member_of(slate.rows[slate.order], self.pinned_rows)
            pinned_positions = slate.order[pinned]
            slate.order = slate.order[~pinned]
            slots = max(0, num_results - len(pinned_positions))
            reports.extend(fill_top(slate, self.catalog, phased[Phase.SELECT], slots))
            slate.order = np.concatenate([slate.order[:slots], pinned_positions, slate.order[slots:]])
        for rule in phased[Phase.PIN]:
            reports.append((rule.name, rule.apply(slate)))
        reports.append(("truncate", Outcome(removed=max(0, len(slate.order) - num_results))))
        return RerankResult(slate.order[:num_results], reports, slate)
