"""A system shared-memory region for the ranker's input tensors, shared with a Triton on this host.

The region is cut into slots, one per call in flight: a call computes its features straight into a
free slot's arrays and the inference request carries only offsets, so the tensors are never copied
into a gRPC message. Outputs stay in Triton's answer (a few bytes a row). That keeps slots safe to
reuse at once: a call that was given up on can only read another call's inputs, which nobody then
looks at, never write into a slot another call reads. When every slot is busy a call uses plain
arrays and the gRPC message.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import tritonclient.utils.shared_memory as shm

from funnel.features import NUM_CATEGORICAL, NUM_DENSE, FeatureBatch

DENSE_ROW_BYTES = NUM_DENSE * 4  # float32
CATEGORICAL_ROW_BYTES = NUM_CATEGORICAL * 8  # int64


class Slot:
    def __init__(self, region: InputRegion, index: int, dense: np.ndarray, categorical: np.ndarray) -> None:
        self.region = region
        self.index = index
        self.dense = dense
        self.categorical = categorical

    @property
    def region_name(self) -> str:
        return self.region.name

    def batch(self, rows: int) -> FeatureBatch:
        """The first `rows` rows of the slot, to write features into."""
        return FeatureBatch(self.dense[:rows], self.categorical[:rows])

    def extents(self, rows: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(offset, byte size) of the dense and the categorical tensor of `rows` rows in the region."""
        start = self.index * self.region.slot_bytes
        categorical_start = start + self.region.rows_per_slot * DENSE_ROW_BYTES
        return (start, rows * DENSE_ROW_BYTES), (categorical_start, rows * CATEGORICAL_ROW_BYTES)

    def release(self) -> None:
        self.region.free(self.index)


class InputRegion:
    def __init__(self, rows_per_slot: int, slots: int = 16) -> None:
        self.rows_per_slot = rows_per_slot + rows_per_slot % 2  # even: int64 tensors start 8-byte aligned
        self.slot_bytes = self.rows_per_slot * (DENSE_ROW_BYTES + CATEGORICAL_ROW_BYTES)
        self.byte_size = slots * self.slot_bytes
        # Unique per process: several ranking replicas may share one Triton.
        self.name = f"funnel-ranking-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.key = "/" + self.name
        self._handle = shm.create_shared_memory_region(self.name, self.key, self.byte_size, create_only=True)
        self._slots = [self._slot(n) for n in range(slots)]
        self._free = list(range(slots))

    def _slot(self, index: int) -> Slot:
        start = index * self.slot_bytes
        dense = shm.get_contents_as_numpy(self._handle, np.float32, [self.rows_per_slot, NUM_DENSE], start)
        categorical_start = start + self.rows_per_slot * DENSE_ROW_BYTES
        categorical = shm.get_contents_as_numpy(
            self._handle, np.int64, [self.rows_per_slot, NUM_CATEGORICAL], categorical_start
        )
        return Slot(self, index, dense, categorical)

    def acquire(self, rows: int) -> Slot | None:
        if rows > self.rows_per_slot or not self._free:
            return None
        return self._slots[self._free.pop()]

    def free(self, index: int) -> None:
        self._free.append(index)

    @property
    def in_use(self) -> int:
        return len(self._slots) - len(self._free)

    def close(self) -> None:
        """Unmap and unlink the region (the arrays of every slot must be dropped first)."""
        self._slots.clear()
        self._free.clear()
        try:
            shm.destroy_shared_memory_region(self._handle)
        except shm.SharedMemoryException:
            pass  # a view still alive somewhere keeps the mapping; the unlink is what matters
