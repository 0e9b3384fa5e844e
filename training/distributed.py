"""Training on several processes with PyTorch's own engine: torchrun starts them, DDP averages gradients.

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 -m training.build ...

The same command runs on one process or N: without torchrun's environment (WORLD_SIZE unset or 1)
nothing here does anything. With it, every process loads the same data; the two-tower training
shards the interactions by user (`user % world == rank`), each process takes 1/N of each batch
from its own shard and scores its users against every process's items (gathered with their
gradients, so the softmax is the one-process batch's), and DistributedDataParallel all-reduces the gradients after
every backward pass (gloo on CPU, NCCL on a GPU), the item table's sparse ones included, so every
process holds the same weights after every step. The rest of the build (impressions, ranker,
evaluation, bundle) runs on rank 0 alone; the other processes leave once the towers are trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional  # all_gather with gradients


@dataclass(frozen=True)
class Group:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, users: np.ndarray) -> np.ndarray:
        """Mask of the rows this process trains on: its share of the users, every row of each."""
        return users % self.world == self.rank


class WorkerDone(Exception):
    """Raised on every process but rank 0 once its part of the training is done."""


def start(device: str = "cpu") -> Group:
    """Join torchrun's process group, if started by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))  # NCCL's collectives run on the current device
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return current()


def current() -> Group:
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group(0, 1)


def common_count(local: int) -> int:
    """The smallest of every process's `local`: each must make as many steps as the others, for DDP
    all-reduces once per step and a process with one more step would wait for the others forever."""
    if current().world == 1:
        return local
    # NCCL reduces only tensors on the GPU; gloo, CPU ones.
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    count = torch.tensor([local], dtype=torch.int64, device=on)
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    return int(count.item())


def gathered(vectors: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's batch of item vectors (with their gradients flowing back to each) and rows,
    in rank order: the in-batch negatives of one large batch. Shapes must agree across processes."""
    if current().world == 1:
        return vectors, rows
    all_vectors = torch.distributed.nn.functional.all_gather(vectors)
    all_rows = [torch.empty_like(rows) for _ in all_vectors]
    dist.all_gather(all_rows, rows)
    return torch.cat(all_vectors), torch.cat(all_rows)


def towers_trained() -> None:
    """Where the shared part of a build ends: the group is dissolved, so whatever rank 0 trains
    next runs on its own, and every other process raises `WorkerDone`."""
    group = current()
    finish()
    if not group.is_main:
        raise WorkerDone
    if group.world > 1:
        # torchrun gives each process one thread (OMP_NUM_THREADS=1) so that N of them share the
        # cores; the rest of the build runs on this process alone, so it takes the cores back (left
        # at one thread, the impressions, the ranker and the evaluation would use one core).
        torch.set_num_threads(len(os.sched_getaffinity(0)))


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
