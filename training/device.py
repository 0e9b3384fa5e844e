"""Where training runs: a GPU when one is asked for and torch can see it, else the CPU, said once.

    python -m training.build --device cuda ...     # a GPU; the CPU, with a message, when none is visible
    python -m training.build --device auto ...     # a GPU when present, quietly the CPU otherwise

The pinned torch is the CPU build, so `cuda` needs a CUDA build of the same torch version
installed over it (`pip install torch==<version> --index-url https://download.pytorch.org/whl/cu126`).
Models are trained on the device and handed back on the CPU: everything after training (the
embeddings, the exports, the evaluation) reads them there, so no caller knows where they trained.
"""

from __future__ import annotations

import os
import sys

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve(requested: str) -> str:
    """The torch device to train on, as a string a config can carry ('cpu', 'cuda:0')."""
    if requested not in DEVICES and not requested.startswith("cuda:"):
        raise ValueError(f"device {requested!r}: expected one of {', '.join(DEVICES)} or cuda:N")
    if requested == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        if requested != "auto":
            built = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
            print(f"--device {requested}: torch sees no CUDA device ({built}); training on the CPU", file=sys.stderr)
        return "cpu"
    # Under torchrun each process takes its own GPU; a device named outright is taken as named.
    index = requested.split(":", 1)[1] if ":" in requested else os.environ.get("LOCAL_RANK", "0")
    # cuBLAS is deterministic only with a fixed workspace; it must be set before the first CUDA call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return f"cuda:{index}"


def deterministic(device: str) -> None:
    """Same seed, same model on the CPU: parallel kernels may otherwise sum in another order per run.
    A few CUDA kernels (the embedding tables' backward among them) have no deterministic version;
    there torch warns instead of refusing, so a GPU run is repeatable only up to those sums."""
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
