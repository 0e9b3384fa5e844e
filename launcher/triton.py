"""Runs the `tritonserver` binary shipped inside the nvidia-pytriton wheel, on loopback.

Two facts of that wheel are handled here (see DESIGN.md): the python backend needs its stub beside
`libtriton_python.so`, and the stub links `libpython3.X.so`, so the running interpreter's own
LIBDIR must come first on LD_LIBRARY_PATH or the stub mixes two Pythons. The stub also ignores
PYTHONPATH, which the model's `model.py` reads itself to find torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from launcher.processes import log_size, spawn, stop_group, wait_until_ready


def server_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_backends(root: Path | None = None) -> Path:
    """The backends directory, with the python backend stub for this interpreter in place."""
    root = root or server_root()
    backend = root / "backends" / "python"
    stub = backend / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise FileNotFoundError(f"nvidia-pytriton ships no python backend stub for Python {version}")
        shutil.copy2(source, stub)
    return root / "backends"


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    site = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class TritonTls:
    """Mutual TLS on Triton's gRPC port: its certificate and key, and the CA its clients must hold."""

    cert: Path
    key: Path
    ca: Path

    def flags(self) -> list[str]:
        return [
            "--grpc-use-ssl-mutual=true",
            f"--grpc-server-cert={self.cert}",
            f"--grpc-server-key={self.key}",
            f"--grpc-root-cert={self.ca}",
        ]


@dataclass
class TritonServer:
    model_repository: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    models: list[str] = field(default_factory=lambda: ["ranker"])
    host: str = "127.0.0.1"
    tls: TritonTls | None = None
    process: subprocess.Popen | None = None
    _log_start: int = 0  # where this start's lines begin in the appended log

    def command(self) -> list[str]:
        root = server_root()
        command = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={prepare_backends(root)}",
            "--model-control-mode=explicit",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        tls = self.tls.flags() if self.tls else []
        return command + tls + [f"--load-model={model}" for model in self.models]

    def start(self) -> subprocess.Popen:
        self._log_start = log_size(self.log_path)
        self.process = spawn(self.command(), self.log_path, env=server_env())
        return self.process

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def models_ready(self) -> bool:
        try:
            for model in self.models:
                url = f"http://{self.host}:{self.http_port}/v2/models/{model}/ready"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status != 200:
                        return False
            return True
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        name = f"tritonserver (models {', '.join(self.models)})"
        wait_until_ready(name, self.models_ready, self.process, self.log_path, self._log_start, timeout_s, 0.2)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process.pid)
            self.process.wait(timeout=5)
            self.process = None
