"""Writes the ranker into a standard Triton model repository.

<repository>/<model>/config.pbtxt            python backend (the bundled local server)
<repository>/<model>/configs/libtorch.pbtxt  pytorch_libtorch (the official image in a cluster,
                                             selected there with --model-config-name=libtorch)
<repository>/<model>/<version>/model.pt      the TorchScript ranker, shared by both
<repository>/<model>/<version>/model.py      python-backend entry point
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

INPUT_NAME = "features"
OUTPUT_NAME = "score"


@dataclass(frozen=True)
class TritonModelConfig:
    name: str = "ranker"
    num_features: int = 6
    max_batch_size: int = 1024
    max_queue_delay_us: int = 500
    instances: int = 1
    dynamic_batching: bool = True


def config_pbtxt(config: TritonModelConfig, backend: str) -> str:
    """The model configuration; `backend` is "python" or "pytorch_libtorch"."""
    if backend == "python":
        head = f'name: "{config.name}"\nbackend: "python"\n'
        input_name, output_name = INPUT_NAME, OUTPUT_NAME
    else:
        # libtorch binds tensors by position; the `__N` suffix is its naming convention.
        head = f'name: "{config.name}"\nplatform: "pytorch_libtorch"\n'
        input_name, output_name = f"{INPUT_NAME}__0", f"{OUTPUT_NAME}__0"
    batching = (
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}\n"
        if config.dynamic_batching
        else ""
    )
    return (
        head
        + f"max_batch_size: {config.max_batch_size}\n"
        + "version_policy: { latest: { num_versions: 1 } }\n"
        + f'input [\n  {{ name: "{input_name}" data_type: TYPE_FP32 dims: [ {config.num_features} ] }}\n]\n'
        + f'output [\n  {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ 1 ] }}\n]\n'
        + batching
        + f"instance_group [\n  {{ kind: KIND_CPU count: {config.instances} }}\n]\n"
        + 'model_warmup [\n  {\n    name: "warmup"\n    batch_size: 64\n'
        + f'    inputs {{ key: "{input_name}" value: {{ data_type: TYPE_FP32 '
        + f"dims: [ {config.num_features} ] random_data: true }} }}\n"
        + "  }\n]\n"
    )


def write_model_version(repository: Path, torchscript: Path, version: int, config: TritonModelConfig) -> Path:
    """Add `version` of the model (and both configs) to the repository; returns the version dir."""
    model_dir = repository / config.name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(torchscript, version_dir / "model.pt")
    shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(config, "python"))
    (model_dir / "configs").mkdir(exist_ok=True)
    (model_dir / "configs" / "libtorch.pbtxt").write_text(config_pbtxt(config, "pytorch_libtorch"))
    return version_dir


def next_version(repository: Path, model_name: str) -> int:
    model_dir = repository / model_name
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1
