"""The Dockerfiles, checked without a Docker engine against the code they package."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.images import DOCKERFILES, check, parse
from deploy.imports import REPO_ROOT, closure


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_can_run_its_service(image):
    dockerfile = parse(REPO_ROOT / DOCKERFILES[image])
    assert dockerfile.entry_module and len(dockerfile.base_images) == 2
    assert check(dockerfile) == []


def test_images_carry_only_what_their_service_imports():
    assert "torch" not in closure("services.ranking").distributions  # Triton runs the model
    assert "torch" not in closure("services.gateway").distributions
    assert {"torch", "faiss-cpu"} <= closure("services.retrieval").distributions
    ranking = parse(REPO_ROOT / DOCKERFILES["ranking"])
    assert "torch" not in ranking.packages and "tritonclient[grpc]" in ranking.packages


BROKEN = {
    "a package left out": (lambda d: d.packages.remove("torch"), "imports 'torch' but the image does not install it"),
    "a package the lock does not pin": (lambda d: d.packages.append("requests-toolbelt"), "does not pin"),
    "running as root": (lambda d: setattr(d, "user", "0:0"), "numeric non-root USER"),
    "a floating base image": (lambda d: d.base_images.__setitem__(1, "python:latest"), "is not pinned"),
    "a service folder left out": (
        lambda d: d.copied.remove("services/retrieval"),
        "needs services/retrieval/index.py, which is not copied",
    ),
    "a single stage": (lambda d: d.base_images.pop(0), "must be multi-stage"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_dockerfile_check_catches(case):
    mutate, expected = BROKEN[case]
    dockerfile = dataclasses.replace(parse(REPO_ROOT / DOCKERFILES["retrieval"]))
    dockerfile.packages, dockerfile.copied = list(dockerfile.packages), list(dockerfile.copied)
    dockerfile.base_images = list(dockerfile.base_images)
    mutate(dockerfile)
    assert any(expected in problem for problem in check(dockerfile)), check(dockerfile)
