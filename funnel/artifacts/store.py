"""Versioned artifact directories.

A version is a directory `<root>/<version>/` holding `.npy`/`.json` files (never pickles, so an
artifact does not tie a deployment to a Python version) and a `manifest.json` written last: a
directory without a manifest is incomplete and ignored. Version names sort by creation time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
log = logging.getLogger("funnel.artifacts")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or corrupt."""


def new_version_name(tag: str = "") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stamp}-{tag}" if tag else stamp


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, version: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file in `directory` and write the manifest that marks it complete."""
    files: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            entry: dict[str, Any] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
            if path.suffix == ".npy":
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                entry["shape"] = list(array.shape)
                entry["dtype"] = str(array.dtype)
            files[str(path.relative_to(directory))] = entry
    manifest = {"version": version, "created": time.time(), "files": files, **metadata}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.rename(directory / MANIFEST)
    return manifest


def read_manifest(directory: Path, verify: bool = True) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST}; the artifact is incomplete")
    manifest = json.loads(path.read_text())
    if verify:
        for name, entry in manifest["files"].items():
            file = directory / name
            if not file.is_file():
                raise ArtifactError(f"{directory}: {name} is listed in the manifest but missing")
            if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
                raise ArtifactError(f"{directory}: {name} does not match its manifest checksum")
    return manifest


def latest_version(root: Path) -> Path | None:
    """The newest complete version under `root`, or None when there is none yet."""
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
    return complete[-1] if complete else None


def publish_copy(source: Path, root: Path, version: str) -> Path:
    """Publish the files of version `source` again as `root/version`, manifest last, the way a
    training job publishes a new version (used to exercise hot swaps)."""
    target = root / version
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(MANIFEST, "__pycache__"))
    previous = json.loads((source / MANIFEST).read_text())
    write_manifest(target, version, {k: v for k, v in previous.items() if k not in ("version", "files", "created")})
    return target


async def wait_for_latest(root: Path, poll_s: float) -> Path:
    """The newest complete version under `root`, waiting (NOT_SERVING meanwhile) until one exists."""
    while (version := latest_version(root)) is None:
        log.info("waiting for an artifact", extra={"path": str(root)})
        await asyncio.sleep(poll_s)
    return version


def save_array(directory: Path, name: str, array: np.ndarray) -> None:
    np.save(directory / f"{name}.npy", array, allow_pickle=False)


def load_array(directory: Path, name: str, mmap: bool = False) -> np.ndarray:
    """The array of `name`.npy; with `mmap`, read-only over the file's pages (shared by every process
    on the node that maps the same file)."""
    path = directory / f"{name}.npy"
    if not path.is_file():
        raise ArtifactError(f"{directory}: missing {name}.npy")
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    # A plain ndarray over the same mapping: np.memmap's Python-level __getitem__ and
    # __array_finalize__ run on every index of a request otherwise, for nothing.
    return np.asarray(array) if mmap else array
