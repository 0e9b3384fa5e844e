"""The first step of every request when the online store is configured: read the user's live state
(one round trip, within a budget of its own) and fold it into what the later steps send.

- recent interactions join the request's session items, so retrieval's user tower and ranking's
  features see what the user did a moment ago, and re-ranking leaves it out as seen;
- dismissed items and what was served within the TTL join the exclusions.

Store down or late: the answer comes from the bundle's stored history alone, DEGRADED with the
cause; nothing else changes, and the next request tries the store again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from funnel.live.schema import LiveState
from funnel.live.store import LiveStore, StoreError
from services.gateway.steps import DEADLINE, DEGRADED, OK, UNAVAILABLE, Outcome, RequestState, Step


@dataclass(frozen=True)
class LiveLimits:
    recent: int  # latest interactions folded into recent items
    dismissed: int
    served: int  # 0: what was served is not left out
    max_recent: int  # what the stages accept
    max_excluded: int


class HydrateLiveState(Step):
    name = "live_state"
    # Runs first, reported last: clients that read the stages' reports by position keep working.
    reported_after_stages = True

    def __init__(self, store: LiveStore, budget_ms: float, limits: LiveLimits) -> None:
        super().__init__([], budget_ms)
        self.store = store
        self.limits = limits

    def items_in(self, state: RequestState) -> int:
        return 0

    async def run(self, state: RequestState) -> Outcome:
        timeout = state.budget.stage_timeout(self.budget_ms / 1000, state.reserve_s)
        started = time.perf_counter()
        user = state.request.user_id
        limits = self.limits
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):  # no task per read, as wait_for would make
                live = await self.store.read(
                    user, int(time.time() * 1000), limits.recent, limits.dismissed, limits.served
                )
        except TimeoutError:
            outcome = Outcome(DEGRADED, DEADLINE, f"live state not read within {timeout * 1000:.1f} ms")
        except StoreError as exc:
            outcome = Outcome(DEGRADED, UNAVAILABLE, f"online store unavailable ({exc})")
        else:
            fold_in(state, live, limits)
            outcome = Outcome(OK, items_out=len(live.recent) + len(live.dismissed) + len(live.served))
        if outcome.status != OK:
            outcome.message += "; answered from the bundle's stored history"
        outcome.latency_ms = (time.perf_counter() - started) * 1000  # server_ms stays 0: Redis reports none
        outcome.attempts = 1
        return outcome


def fold_in(state: RequestState, live: LiveState, limits: LiveLimits) -> None:
    """Live interactions before the session's own (newest last, each once); exclusions in order of
    importance (the client's, dismissed, served) within what the stages accept."""
    recent = list(dict.fromkeys(reversed([*live.recent, *state.recent_item_ids])))[::-1]
    state.recent_item_ids = recent[-limits.max_recent :]
    exclude = list(dict.fromkeys([*state.exclude_item_ids, *live.dismissed, *live.served]))
    state.exclude_item_ids = exclude[: limits.max_excluded]
    state.exclude.update(live.dismissed, live.served)
