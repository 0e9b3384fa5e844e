"""Load shedding: how many calls a process serves at once, the rest refused immediately.

A refused call costs the server microseconds and tells the caller at once (RESOURCE_EXHAUSTED),
where a queued call would wait, push every accepted call's latency up, and time out anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from funnel.runtime.metrics import CONCURRENCY_LIMIT


class ConcurrencyLimit:
    """A fixed limit, or an adaptive one that keeps the server's own latency under a target.

    Adaptive (AIMD, as TCP's congestion window): a call that finishes within the target raises the
    limit by 1/limit (about +1 per window of calls); one that finishes late cuts it by `backoff`,
    at most once per target interval so one slow burst is one cut. The limit stays between `floor`
    and `ceiling`. `ceiling` 0 with no target means no limit at all.
    """

    def __init__(
        self,
        ceiling: int,
        latency_target_s: float = 0.0,
        floor: int = 2,
        backoff: float = 0.9,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adaptive = latency_target_s > 0
        self.ceiling = ceiling if ceiling > 0 else (1024 if self.adaptive else 0)
        self.floor = min(floor, self.ceiling) if self.ceiling else floor
        self.latency_target_s = latency_target_s
        self.backoff = backoff
        self._clock = clock
        self.limit = float(self.ceiling)
        self.in_flight = 0
        self._last_cut = float("-inf")
        CONCURRENCY_LIMIT.set(self.ceiling)

    def try_acquire(self) -> bool:
        if self.ceiling and self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        return True

    def release(self, latency_s: float) -> None:
        self.in_flight -= 1
        if not self.adaptive:
            return
        if latency_s <= self.latency_target_s:
            self.limit = min(self.ceiling, self.limit + 1.0 / max(self.limit, 1.0))
        else:
            now = self._clock()
            if now - self._last_cut < self.latency_target_s:
                return
            self._last_cut = now
            self.limit = max(float(self.floor), self.limit * self.backoff)
        CONCURRENCY_LIMIT.set(int(self.limit))
