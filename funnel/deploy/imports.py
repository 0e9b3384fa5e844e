"""What an entry module needs at run time: the repository modules it reaches and the packages they import.

Read from the source (AST), not by importing it, so that an image's contents can be checked without
building the image. Imports inside functions count too: an image must have what any code path loads.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_PACKAGES = ("funnel", "gateway", "services", "training")


@dataclass(frozen=True)
class Closure:
    files: frozenset[Path]  # repository files the entry module reaches
    distributions: frozenset[str]  # normalised names of the third-party distributions they import


def normalise(distribution: str) -> str:
    """PEP 503 name without extras: `tritonclient[grpc]` -> `tritonclient`, `PyYAML` -> `pyyaml`."""
    return re.sub(r"[-_.]+", "-", distribution.split("[")[0]).lower()


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pkg import sub` may name a submodule.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def closure(entry_module: str, root: Path = REPO_ROOT) -> Closure:
    """Every repository file reachable from `entry_module` and every distribution those files import."""
    top_levels: set[str] = set()
    files: set[Path] = set()
    pending = [entry_module, f"{entry_module}.__main__"]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        if top not in REPO_PACKAGES:
            top_levels.add(top)
            continue
        path = module_file(module, root)
        if path is None:
            continue  # a name imported from a module, not a module of its own
        files.add(path)
        parts = module.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        pending.extend(".".join(parts[:n]) for n in range(1, len(parts)))
        pending.extend(_imported_modules(path))
    return Closure(frozenset(files), frozenset(_distributions(top_levels)))


def _distributions(top_levels: set[str]) -> set[str]:
    providers = importlib.metadata.packages_distributions()
    found = set()
    for name in top_levels - set(sys.stdlib_module_names) - {"__future__"}:
        for distribution in providers.get(name, []):
            found.add(normalise(distribution))
    return found
