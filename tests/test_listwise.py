"""The ranker's listwise loss, its batches of whole cuts, and hard negatives in the impressions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_deep_ranker import positive_wins, train_planted
from training.impressions import ImpressionConfig, draw_negatives
from training.ranker import RankerConfig
from training.ranker_losses import cut_batches, listwise_loss, ranker_loss


def test_listwise_loss_is_each_cuts_softmax_cross_entropy_averaged_over_cuts():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.3, 1.2, 0.0, 0.7, -0.4])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    cuts = torch.tensor([4, 4, 4, 9, 9, 9, 2, 2])  # each cut's rows adjacent, the cuts not sorted
    expected = []
    for rows in (slice(0, 3), slice(3, 6), slice(6, 8)):
        log_p = torch.log_softmax(logits[rows], dim=0)
        positives = labels[rows] > 0
        expected.append(-log_p[positives].mean())
    assert torch.allclose(listwise_loss(logits, labels, cuts), torch.stack(expected).mean())


def test_the_losses_have_finite_gradients_with_uneven_cuts():
    logits = torch.randn(7, requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    cuts = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    for kind in ("listwise", "both"):
        logits.grad = None
        ranker_loss(kind, logits, labels, cuts).backward()
        assert torch.isfinite(logits.grad).all()
        assert logits.grad[6] == 0 or kind == "both"  # a cut of one positive row has nothing to learn listwise


def test_cut_batches_cover_every_row_once_in_whole_cuts():
    cuts = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 8, 50))
    rows = np.flatnonzero(cuts % 5 != 0)  # some cuts held apart, as validation holds users
    batches = list(cut_batches(rows, cuts, 20, torch.Generator().manual_seed(1)))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == rows.tolist()
    for batch in batches:
        cut_of_row = cuts[batch]
        changes = np.flatnonzero(cut_of_row[1:] != cut_of_row[:-1])
        assert len(changes) + 1 == len(np.unique(cut_of_row))  # each cut's rows are adjacent
        for cut in np.unique(cut_of_row):  # and whole
            assert (cut_of_row == cut).sum() == (cuts[rows] == cut).sum()


def test_hard_negatives_come_from_the_top_of_the_candidates():
    others = np.setdiff1d(np.arange(500), [3, 40])  # two positives at positions 3 and 40
    config = ImpressionConfig(negatives_per_cut=24, hard_negatives_per_cut=12, hard_negative_depth=30)
    negatives = draw_negatives(others, config, np.random.default_rng(0))
    assert len(negatives) == len(np.unique(negatives)) == 24
    assert np.isin(negatives, others).all()
    assert (negatives < 30).sum() >= 12
    uniform = draw_negatives(others, ImpressionConfig(negatives_per_cut=24), np.random.default_rng(0))
    assert (uniform < 30).sum() < 12  # uniform draws put about 1.4 of 24 in the top 30


def test_fewer_candidates_than_negatives_takes_them_all():
    others = np.arange(5)
    config = ImpressionConfig(negatives_per_cut=24, hard_negatives_per_cut=12, hard_negative_depth=3)
    assert sorted(draw_negatives(others, config, np.random.default_rng(0)).tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "settings", [{"loss": "listwise"}, {"loss": "both"}, {"loss": "pointwise", "cut_batches": True}]
)
def test_rankers_trained_on_whole_cuts_learn_the_planted_target_attention(settings):
    wins = positive_wins(train_planted(RankerConfig(max_epochs=10, **settings)), np.random.default_rng(3))
    assert wins >= 0.9, wins


def test_an_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="ranker loss"):
        RankerConfig(loss="pairwise")
