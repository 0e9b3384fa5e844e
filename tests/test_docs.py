"""The documents point at things that exist: every link and anchor, every `make` target, every
`python -m` module; none cites an issue a reader cannot open; the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.stack import REPO_ROOT

DOCUMENTS = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "k8s" / "README.md", *(REPO_ROOT / "docs").glob("**/*.md")],
    key=str,
)
# Reports written by a benchmark or an evaluation run are records of that run, kept as they were.
WRITTEN_BY_RUNS = {"report.md", "streaming.md"}
CURATED = [d for d in DOCUMENTS if d.name not in WRITTEN_BY_RUNS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:^|`|\$ )make ([a-z][a-z0-9-]*)", re.M)  # as a command: in code, not in prose
MODULE = re.compile(r"python -m ([a-z_][a-z0-9_.]*)")


def name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("document", CURATED, ids=name)
def test_every_relative_link_and_anchor_resolves(document):
    for target in LINK.findall(document.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        assert linked.exists(), f"{name(document)} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{name(document)} links to #{anchor}, not a heading of {linked.name}"


@pytest.mark.parametrize("document", CURATED, ids=name)
def test_every_make_target_and_module_named_exists(document):
    text = document.read_text()
    targets = set(re.findall(r"^([a-zA-Z0-9_-]+):", (REPO_ROOT / "Makefile").read_text(), re.M))
    assert not {t for t in MAKE.findall(text)} - targets, f"{name(document)} names make targets the Makefile lacks"
    for module in set(MODULE.findall(text)):
        path = REPO_ROOT.joinpath(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file() or module == "grpc_tools.protoc", (
            f"{name(document)} runs python -m {module}, which is no module here"
        )


@pytest.mark.parametrize("document", CURATED, ids=name)
def test_no_document_cites_an_issue_number(document):
    text = re.sub(r"[\w-]+/[\w-]+#\d+", "", document.read_text())  # owner/repo#N: a public tracker's thread
    assert not re.findall(r"(?i)\bissues? #?\d+|(?<![\w/&])#\d+\b", text), name(document)


def test_the_readme_is_short_and_gives_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text(), "CI runs the README's test command"
