"""The package layout the images rely on: `funnel/` is the runtime every service imports, and
nothing in it reaches into a service, the gateway, training or the deploy tooling."""

from __future__ import annotations

import ast

from deploy.images import DOCKERFILES, parse
from deploy.imports import REPO_ROOT

OUTSIDE_THE_RUNTIME = ("gateway", "services", "training", "deploy", "benchmarks", "evaluation", "tests")


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_runtime_module_imports_a_service_the_gateway_training_or_the_tooling():
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in OUTSIDE_THE_RUNTIME
        )
        for path in (REPO_ROOT / "funnel").rglob("*.py")
        if "v1" not in path.parts and "v2" not in path.parts
    }
    assert not {path: modules for path, modules in offenders.items() if modules}


def test_service_images_do_not_ship_the_deploy_tool():
    for name, path in DOCKERFILES.items():
        copied = parse(REPO_ROOT / path).copied
        assert not [c for c in copied if c.split("/")[0] == "deploy"], f"{name} copies the deploy tool"
        assert "funnel" in copied, f"{name} ships the runtime"
