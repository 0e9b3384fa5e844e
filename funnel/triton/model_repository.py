"""Writes the ranker into a standard Triton model repository.

<repository>/<model>/config.pbtxt            python backend (the bundled local server)
<repository>/<model>/configs/libtorch.pbtxt  pytorch_libtorch on CPU (the official image in a
                                             cluster, selected with --model-config-name=libtorch)
<repository>/<model>/configs/libtorch-gpu.pbtxt  the same on a GPU (k8s/components/gpu)
<repository>/<model>/<version>/model.pt      the TorchScript ranker, shared by both
<repository>/<model>/<version>/model.py      python-backend entry point
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from funnel.features import NUM_CATEGORICAL, NUM_DENSE

# libtorch binds tensors by position and names them `<name>__<index>`; the python config uses the
# same names so that the ranking service sends one set of tensors whichever backend Triton runs.
DENSE_INPUT = "dense__0"
CATEGORICAL_INPUT = "categorical__1"
SCORE_OUTPUT = "score__0"
INPUTS = ((DENSE_INPUT, "TYPE_FP32", NUM_DENSE), (CATEGORICAL_INPUT, "TYPE_INT64", NUM_CATEGORICAL))

# Named configurations under <model>/configs/ for the official image: name -> instance kind.
CLUSTER_CONFIGS = {"libtorch": "KIND_CPU", "libtorch-gpu": "KIND_GPU"}


@dataclass(frozen=True)
class TritonModelConfig:
    name: str = "ranker"
    max_batch_size: int = 1024
    # No wait for more requests: the batcher still groups whatever queued while the instance was
    # busy, and on a CPU instance a wait only idles it. `make bench-ranking`, 500-row requests:
    # with a 500 us delay, 1-2 clients got 0.58-0.62x the throughput of no batching; with none,
    # 0.96-0.99x, and 1.06-1.17x at 4-16 clients (batching's gain kept).
    max_queue_delay_us: int = 0
    # A request still queued after this long is rejected by Triton; each request may ask for less
    # (its own "timeout" parameter: what remains of the ranking call's budget). The ranking service
    # never cancels a call (see funnel/triton/client.py), so this is what drops late work.
    queue_timeout_us: int = 1_000_000
    instances: int = 1  # the cluster's libtorch configurations
    # The python backend (the bundled server) stalls for 30-160 ms when the batcher hands one
    # instance two requests at once. With two instances, calls that overlap each get their own, so
    # batches form only when both are busy. `make bench-ranking`, open-loop 25 req/s, 250-600 rows:
    # one instance p99.9 72.6 ms and 10 of 1,464 calls over 20 ms; two 5.7 ms and none.
    python_instances: int = 2
    dynamic_batching: bool = True
    # On a GPU one forward of many rows costs little more than one of a few hundred (the demo ranker
    # scored 8 merged 500-row requests 6.4x faster than one by one on an H200), so the GPU
    # configuration lets the batcher merge up to 8 of the ranking service's 1,024-row pieces and
    # wait a little for them to arrive. Not yet measured on a GPU with this ranker.
    gpu_max_batch_size: int = 8192
    gpu_max_queue_delay_us: int = 200


def config_pbtxt(config: TritonModelConfig, backend: str, instance_kind: str = "KIND_CPU") -> str:
    """The model configuration; `backend` is "python" or "pytorch_libtorch"."""
    head = 'backend: "python"' if backend == "python" else f'platform: "{backend}"'
    instances = config.python_instances if backend == "python" else config.instances
    gpu = instance_kind == "KIND_GPU"
    max_batch_size = config.gpu_max_batch_size if gpu else config.max_batch_size
    queue_delay_us = config.gpu_max_queue_delay_us if gpu else config.max_queue_delay_us
    inputs = ",\n".join(f'  {{ name: "{name}" data_type: {dtype} dims: [ {width} ] }}' for name, dtype, width in INPUTS)
    warmup_inputs = "\n".join(
        f'    inputs {{ key: "{name}" value: {{ data_type: {dtype} dims: [ {width} ] zero_data: true }} }}'
        for name, dtype, width in INPUTS
    )
    batching = (
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n"
        "  default_queue_policy {\n    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {config.queue_timeout_us}\n    allow_timeout_override: true\n  }}\n}}\n"
        if config.dynamic_batching
        else ""
    )
    return (
        f'name: "{config.name}"\n{head}\n'
        f"max_batch_size: {max_batch_size}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"input [\n{inputs}\n]\n"
        f'output [\n  {{ name: "{SCORE_OUTPUT}" data_type: TYPE_FP32 dims: [ 1 ] }}\n]\n'
        f"{batching}"
        f"instance_group [\n  {{ kind: {instance_kind} count: {instances} }}\n]\n"
        f'model_warmup [\n  {{\n    name: "warmup"\n    batch_size: 64\n{warmup_inputs}\n  }}\n]\n'
    )


def write_model_version(repository: Path, torchscript: Path, version: int, config: TritonModelConfig) -> Path:
    """Add `version` of the model (and both configs) to the repository; returns the version dir."""
    model_dir = repository / config.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(torchscript, version_dir / "model.pt")
    shutil.copyfile(Path(__file__).with_name("python_model.py"), version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(config, "python"))
    (model_dir / "configs").mkdir(exist_ok=True)
    for name, kind in CLUSTER_CONFIGS.items():
        (model_dir / "configs" / f"{name}.pbtxt").write_text(config_pbtxt(config, "pytorch_libtorch", kind))
    return version_dir


def next_version(repository: Path, model_name: str) -> int:
    model_dir = repository / model_name
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1
