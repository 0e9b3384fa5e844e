"""The layout the architecture claims, enforced: five processes under `services/`, each of one shape,
over one library (`funnel/`) that every image ships.

- no service imports another service;
- training, evaluation and benchmarks import no service: what they share with serving lives in the
  library (candidate sources, the FAISS index, the Triton repository writer and client, the policy);
- the library imports none of the services, the tooling (the local launcher and demo, deploy,
  benchmarks, evaluation) or training, so an image of it carries no more than its service needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deploy.images import DOCKERFILES, parse
from deploy.imports import REPO_ROOT

SERVICES = ("events", "gateway", "ranking", "reranking", "retrieval")
# What every process folder holds: its entry point, its gRPC servicer, its settings, its image.
SERVICE_SHAPE = ("__init__.py", "__main__.py", "servicer.py", "settings.py", "Dockerfile")
OUTSIDE_THE_LIBRARY = ("services", "training", "launcher", "deploy", "benchmarks", "evaluation", "tests")
TOOLING = ("launcher", "deploy", "benchmarks", "evaluation", "tests")
# What training and serving must agree on, or a model is trained on one thing and served another.
SHARED_DEFINITIONS = (
    "MAX_ID_LENGTH", "COUNTRIES", "country_slot", "country_slots", "NUM_COUNTRY_SLOTS", "AGE_EDGES_DAYS",
    "age_bucket", "NUM_AGE_BUCKETS", "DEFAULT_LIMITS", "SOURCE_CODES",
)  # fmt: skip
CODE_FOLDERS = ("funnel", "services", "training", "evaluation", "benchmarks", "launcher", "deploy")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def python_files(folder: str) -> list[Path]:
    return [p for p in (REPO_ROOT / folder).rglob("*.py") if "v1" not in p.parts and "v2" not in p.parts]


def offenders(folder: str, forbidden) -> dict[str, list[str]]:
    """Files under `folder` and the modules they import for which `forbidden(module)` holds."""
    found = {
        str(path.relative_to(REPO_ROOT)): sorted(m for m in imported_modules(path) if forbidden(m))
        for path in python_files(folder)
    }
    return {path: modules for path, modules in found.items() if modules}


def test_the_five_processes_live_under_services_each_of_one_shape():
    folders = sorted(p.name for p in (REPO_ROOT / "services").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(SERVICES)
    for service in SERVICES:
        missing = [name for name in SERVICE_SHAPE if not (REPO_ROOT / "services" / service / name).exists()]
        assert not missing, f"services/{service} lacks {missing}"
    assert sorted(path.split("/")[1] for path in DOCKERFILES.values() if path.startswith("services/")) == sorted(
        SERVICES
    )


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_service_or_the_tooling(service):
    def foreign(module: str) -> bool:
        parts = module.split(".")
        other_service = parts[0] == "services" and len(parts) > 1 and parts[1] != service
        return other_service or parts[0] in (*TOOLING, "training")

    assert not offenders(f"services/{service}", foreign)


@pytest.mark.parametrize("folder", ["training", "evaluation", "benchmarks"])
def test_training_evaluation_and_benchmarks_import_no_service(folder):
    assert not offenders(folder, lambda module: module.split(".")[0] == "services")


def test_no_library_module_imports_a_service_training_or_the_tooling():
    assert not offenders("funnel", lambda module: module.split(".")[0] in OUTSIDE_THE_LIBRARY)


def top_level_definitions(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_what_training_and_serving_must_agree_on_is_defined_once_in_the_library():
    defined_in: dict[str, list[str]] = {name: [] for name in SHARED_DEFINITIONS}
    for folder in CODE_FOLDERS:
        for path in python_files(folder):
            for name in top_level_definitions(path) & set(SHARED_DEFINITIONS):
                defined_in[name].append(str(path.relative_to(REPO_ROOT)))
    assert {name: paths for name, paths in defined_in.items() if len(paths) != 1} == {}
    assert all(paths[0].startswith("funnel/") for paths in defined_in.values()), defined_in


def test_the_checks_above_see_a_forbidden_import(tmp_path):
    # A layout rule that cannot fail proves nothing: the same reader finds a planted import.
    planted = tmp_path / "planted.py"
    planted.write_text("import services.ranking.servicer\nfrom launcher.stack import Stack\nMAX_ID_LENGTH = 7\n")
    assert {"services.ranking.servicer", "launcher.stack"} <= imported_modules(planted)
    assert "MAX_ID_LENGTH" in top_level_definitions(planted)


def test_service_images_do_not_ship_the_tooling():
    for name, path in DOCKERFILES.items():
        copied = parse(REPO_ROOT / path).copied
        assert not [c for c in copied if c.split("/")[0] in TOOLING], f"{name} copies tooling"
        assert "funnel" in copied, f"{name} ships the library"
