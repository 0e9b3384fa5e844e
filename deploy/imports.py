"""What an entry module needs at run time: the repository modules it reaches and the packages they import.

Read from the source (AST), not by importing it, so that an image's contents can be checked without
building the image. Imports inside functions count too: an image must have what any code path loads.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_PACKAGES = ("funnel", "services", "training", "launcher", "evaluation", "benchmarks", "deploy")


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
    external: set[str] = set()
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
            external.add(module)
            continue
        path = module_file(module, root)
        if path is None:
            continue  # a name imported from a module, not a module of its own
        files.add(path)
        parts = module.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        pending.extend(".".join(parts[:n]) for n in range(1, len(parts)))
        pending.extend(_imported_modules(path))
    return Closure(frozenset(files), frozenset(_distributions(external)))


def _distributions(modules: set[str]) -> set[str]:
    """The distribution that installs each module, by its longest dotted prefix that one installs.

    Namespace packages (`google`, `opentelemetry`) are shared by many distributions, so the
    top-level name alone would claim them all.
    """
    owners = _module_owners()
    found = set()
    for module in modules:
        if module.split(".")[0] in sys.stdlib_module_names or module == "__future__":
            continue
        parts = module.split(".")
        for n in range(len(parts), 0, -1):
            owner = owners.get(".".join(parts[:n]))
            if owner:
                found.add(owner)
                break
    return found


@functools.cache
def _module_owners() -> dict[str, str]:
    """Dotted module name -> normalised distribution name, from every installed distribution's files."""
    owners: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = normalise(distribution.metadata["Name"])
        for file in distribution.files or ():
            if file.suffix not in (".py", ".so", ".pyd") or ".." in file.parts:
                continue
            module_parts = [*file.parts[:-1], file.name.split(".")[0]]
            if module_parts[-1] == "__init__":
                module_parts.pop()
            if module_parts:
                owners.setdefault(".".join(module_parts), name)
    return owners
