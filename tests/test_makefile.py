"""The Makefile's own promises, run on a copy of the repository: what `make clean` removes, the next
`make install` makes again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.stack import REPO_ROOT

pytestmark = pytest.mark.processes  # make, and the protobuf compiler it runs


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """The checkout's files (tracked, or new and not ignored), with their times kept so that its
    virtual environment, linked beside them, counts as up to date and is shared, not rebuilt."""
    copy = tmp_path / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    for name in listed.stdout.splitlines():
        if not (REPO_ROOT / name).is_file():  # deleted in the working tree
            continue
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (copy / ".venv").symlink_to(REPO_ROOT / ".venv")
    return copy


def make(repository: Path, *targets: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *targets], cwd=repository, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_clean_removes_both_generated_packages_and_install_generates_both_again(repository):
    make(repository, "protos")
    assert (repository / "funnel/v1/recommender_pb2.py").is_file() and (
        repository / "funnel/v2/ranking_pb2.py"
    ).is_file()
    make(repository, "clean")
    assert not (repository / "funnel/v1").exists() and not (repository / "funnel/v2").exists()
    make(repository, "install")
    assert (repository / "funnel/v1/recommender_pb2.py").is_file() and (
        repository / "funnel/v2/ranking_pb2.py"
    ).is_file()


def test_either_generated_package_missing_regenerates_both(repository):
    make(repository, "protos")
    for package in ("funnel/v1", "funnel/v2"):
        shutil.rmtree(repository / package)
        assert "generating gRPC code" in make(repository, "protos")
        assert (repository / package / "__init__.py").is_file()
    assert "generating gRPC code" not in make(repository, "protos"), "up to date: nothing to do"


def test_help_lists_the_fast_tests_beside_the_whole_suite(repository):
    listed = make(repository, "help")
    assert "test " in listed and "test-fast" in listed
