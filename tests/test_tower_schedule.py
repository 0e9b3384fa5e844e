"""The towers' learning-rate schedule: constant, or a half cosine to zero over the run."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from training.fit import FitConfig, with_settings
from training.protocol import split
from training.synthetic import SIZES, generate
from training.two_tower import SplitAdam, TwoTowerConfig, decay_factor, train_two_tower


def test_cosine_runs_from_the_base_rate_to_zero_and_constant_stays():
    steps = 10
    cosine = [decay_factor("cosine", step, steps) for step in range(steps + 1)]
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert cosine[5] == pytest.approx(0.5)
    assert all(later < earlier for earlier, later in itertools.pairwise(cosine))
    assert cosine[2] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert {decay_factor("constant", step, steps) for step in range(steps + 1)} == {1.0}


def test_the_schedule_is_a_build_setting_and_an_unknown_one_is_refused():
    assert with_settings(FitConfig(), {"towers": {"lr_schedule": "cosine"}}).towers.lr_schedule == "cosine"
    with pytest.raises(ValueError, match="lr_schedule 'linear'"):
        TwoTowerConfig(lr_schedule="linear")


@pytest.mark.parametrize("user_tower", ["pooled", "sequence"])
def test_training_steps_at_the_scheduled_rates(monkeypatch: pytest.MonkeyPatch, user_tower: str):
    seen: list[float] = []
    step = SplitAdam.step

    def recording(self: SplitAdam) -> None:
        seen.append(self.parts[-1].param_groups[0]["lr"])  # the dense layers' Adam
        step(self)

    monkeypatch.setattr(SplitAdam, "step", recording)
    data = generate(SIZES["tiny"], seed=7)
    train, _ = split(data.interactions, 2)
    # Small sequence batches, so the tiny set gives the sequence tower several steps an epoch too.
    config = TwoTowerConfig(epochs=2, learning_rate=0.01, user_tower=user_tower, batch_positions=256)
    train_two_tower(data, train, dataclasses.replace(config, lr_schedule="cosine"))
    steps = len(seen)
    assert steps > 4
    assert seen == pytest.approx([0.01 * decay_factor("cosine", n, steps) for n in range(steps)])
    seen.clear()
    train_two_tower(data, train, config)
    assert set(seen) == {0.01}
