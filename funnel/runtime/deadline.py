"""The request's total budget and the slices of it each stage may spend."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Budget:
    """A deadline on the monotonic clock, created when a request arrives."""

    total_s: float
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float:
        return self.started + self.total_s

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0

    def stage_timeout(self, configured_s: float, reserve_s: float = 0.0) -> float:
        """The configured stage budget, capped by what remains after keeping `reserve_s` back.

        The reserve is time the caller needs afterwards (later stages, its own fallback), so a late
        stage can never consume the whole request.
        """
        return max(0.0, min(configured_s, self.remaining() - reserve_s))


def budget_from_grpc(time_remaining: float | None, default_s: float) -> Budget:
    """Total budget: the client's deadline if it set one, else the configured default."""
    if time_remaining is None:
        return Budget(default_s)
    return Budget(max(0.0, time_remaining))
