"""The bookkeeping every training loop shares: one optimiser step, and a progress line per epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch


class Stepper(Protocol):
    """What an epoch needs of an optimizer (one torch optimizer, or several stepped together)."""

    def zero_grad(self) -> None: ...

    def step(self) -> None: ...


@dataclass
class EpochLog:
    """Mean loss per epoch, printed as each epoch ends so long runs show their progress."""

    name: str
    epochs: int
    losses: list[float] = field(default_factory=list)
    _total: float = 0.0
    _batches: int = 0
    _started: float = field(default_factory=time.monotonic)

    def step(self, optimizer: torch.optim.Optimizer | Stepper, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        self._total += loss.item()
        self._batches += 1

    def end_epoch(self) -> None:
        self.losses.append(self._total / max(1, self._batches))
        took = time.monotonic() - self._started
        print(
            f"  {self.name} epoch {len(self.losses)}/{self.epochs}: loss {self.losses[-1]:.4f} ({took:.1f} s)",
            flush=True,
        )
        self._total, self._batches, self._started = 0.0, 0, time.monotonic()
