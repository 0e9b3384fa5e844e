"""The two-tower loss split across processes is the one-process loss: each process scores its own
users against every process's items, its positives at its offset."""

from __future__ import annotations

import numpy as np
import torch

from training.losses import sampled_softmax_loss


def unit_vectors(rng: np.random.Generator, count: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(count, 16)).astype(np.float32)), dim=1)


def test_halves_of_a_batch_against_the_gathered_items_average_to_the_whole_batch_loss():
    rng = np.random.default_rng(3)
    users, items, sampled_vectors = (unit_vectors(rng, n) for n in (8, 8, 3))
    rows = torch.tensor([4, 1, 4, 7, 2, 1, 9, 5])  # repeats: accidental hits to mask
    log_q = torch.from_numpy(np.log(rng.dirichlet(np.ones(10))).astype(np.float32))
    sampled = torch.tensor([4, 0, 3])

    whole = sampled_softmax_loss(users, items, rows, log_q, 0.1, sampled_vectors, sampled, 10)
    halves = [
        sampled_softmax_loss(users[part], items, rows, log_q, 0.1, sampled_vectors, sampled, 10, first_positive=start)
        for start, part in ((0, slice(0, 4)), (4, slice(4, 8)))
    ]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
    # The masking is real: without it the same rows give another loss.
    unmasked = sampled_softmax_loss(users, items, torch.arange(8), log_q, 0.1, sampled_vectors, sampled, 10)
    assert not torch.isclose(unmasked, whole)
