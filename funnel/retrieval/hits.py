"""What every candidate source returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Hits:
    rows: np.ndarray  # int64 catalog rows, best first
    scores: np.ndarray  # float32, on the source's own scale
