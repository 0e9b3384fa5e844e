"""The --device switch: a GPU when asked for and visible; without one, the CPU, said once, and the
very model a CPU build trains (the pinned torch is the CPU build, so CI always takes that path)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from training import device
from training.build import argument_parser
from training.fit import FitConfig, with_device
from training.protocol import split
from training.synthetic import SIZES, generate
from training.two_tower import TwoTowerConfig, item_embeddings, train_two_tower


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_a_gpu_falls_back_to_the_cpu_and_says_so(no_gpu, capsys) -> None:
    assert device.resolve("cuda") == "cpu"
    message = capsys.readouterr().err
    assert "--device cuda" in message and "training on the CPU" in message


def test_auto_and_cpu_take_the_cpu_quietly_without_a_gpu(no_gpu, capsys) -> None:
    assert (device.resolve("auto"), device.resolve("cpu")) == ("cpu", "cpu")
    assert capsys.readouterr().err == ""


def test_a_visible_gpu_is_taken_per_torchrun_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert device.resolve("cuda") == "cuda:1"
    assert device.resolve("cuda:0") == "cuda:0"
    # Set before the first CUDA call, or deterministic cuBLAS refuses to run.
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda"):
        device.resolve("tpu")
    with pytest.raises(SystemExit):
        argument_parser().parse_args(["--device", "tpu"])


def test_the_device_reaches_both_trained_models() -> None:
    config = with_device(FitConfig(), "cuda:0")
    assert (config.towers.device, config.ranker.device) == ("cuda:0", "cuda:0")
    assert FitConfig().towers.device == FitConfig().ranker.device == "cpu"


def test_the_fallback_trains_the_model_a_cpu_build_trains(no_gpu) -> None:
    data = generate(SIZES["tiny"], seed=7)
    train, _ = split(data.interactions, 2)
    config = TwoTowerConfig(epochs=2)
    on_cpu, cpu_losses = train_two_tower(data, train, config)
    fallen_back, losses = train_two_tower(data, train, dataclasses.replace(config, device=device.resolve("cuda")))
    assert losses == cpu_losses
    np.testing.assert_array_equal(item_embeddings(fallen_back), item_embeddings(on_cpu))
    assert next(fallen_back.items.parameters()).device.type == "cpu"
