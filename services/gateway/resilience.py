"""The gateway's defences against faulty or overloaded stages: a retry budget, latency windows
that set hedge delays, and the quality factor that shrinks candidate counts under pressure.

All three are small, synchronous state machines driven by the request path; they never sleep.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from funnel.runtime.metrics import QUALITY_FACTOR, RETRIES, RETRY_BUDGET_EXHAUSTED


class RetryBudget:
    """Extra calls (retries and hedges) allowed as a share of first calls, plus a small floor.

    Every first call deposits `ratio` of a token, time deposits `floor_per_s` tokens a second, and
    an extra call spends one; the balance is capped at `cap`. However bad things get, extra calls
    stay near `ratio` x first calls (+ the floor), so retries can never multiply an overload.
    """

    def __init__(
        self, ratio: float, floor_per_s: float, cap: float = 20.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.cap = cap
        self._clock = clock
        self._tokens = cap
        self._refilled = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.cap, self._tokens + (now - self._refilled) * self.floor_per_s)
        self._refilled = now

    def record_call(self) -> None:
        self._refill()
        self._tokens = min(self.cap, self._tokens + self.ratio)

    def try_spend(self, stage: str, kind: str) -> bool:
        """Take a token for one extra call of `kind` (retry or hedge) to `stage`, if there is one."""
        self._refill()
        if self._tokens < 1.0:
            RETRY_BUDGET_EXHAUSTED.labels(stage, kind).inc()
            return False
        self._tokens -= 1.0
        RETRIES.labels(stage, kind).inc()
        return True


class LatencyWindow:
    """The last `size` successful latencies of one call target, for hedge delays."""

    def __init__(self, size: int = 200, min_samples: int = 20) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.min_samples = min_samples

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (nearest rank), or None until enough calls were seen to trust it."""
        if len(self._samples) < self.min_samples:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class QualityFactor:
    """Share of the configured candidate counts the gateway asks for, driven by stage latency.

    Pressure is a stage's latency as a share of its budget (1.0 = cut off). It is smoothed, and at
    most once per `interval_s` the factor moves: multiplied by `decrease` while smoothed pressure is
    above `high`, raised by `increase` while it is below `low` (AIMD: back off fast, recover gently).
    Fewer candidates cost retrieval and ranking less, so quality is traded before requests are shed.
    """

    def __init__(
        self,
        floor: float,
        high: float = 0.7,
        low: float = 0.4,
        decrease: float = 0.8,
        increase: float = 0.05,
        interval_s: float = 0.2,
        smoothing: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.floor = floor
        self.high, self.low = high, low
        self.decrease, self.increase = decrease, increase
        self.interval_s = interval_s
        self.smoothing = smoothing
        self._clock = clock
        self.value = 1.0
        self.pressure = 0.0
        self._moved = clock()
        QUALITY_FACTOR.set(self.value)

    def observe(self, pressure: float) -> None:
        """Feed one request's worst stage pressure (latency / budget)."""
        self.pressure += self.smoothing * (min(pressure, 2.0) - self.pressure)
        now = self._clock()
        if now - self._moved < self.interval_s:
            return
        if self.pressure > self.high:
            self.value = max(self.floor, self.value * self.decrease)
        elif self.pressure < self.low:
            self.value = min(1.0, self.value + self.increase)
        else:
            return
        self._moved = now
        QUALITY_FACTOR.set(self.value)

    def scale(self, count: int) -> int:
        """A configured candidate count scaled by the factor, never below one."""
        return max(1, math.ceil(count * self.value))
