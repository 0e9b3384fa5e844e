"""Every offline check of the Kubernetes deployment, for one overlay or all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from deploy.hardening_checks import hardening_problems
from deploy.images import DOCKERFILES, check, parse
from deploy.imports import REPO_ROOT
from deploy.manifests import Manifests
from deploy.network_checks import network_problems
from deploy.render import Object, render
from deploy.schema_checks import VERSIONS, schema_problems
from deploy.wiring_checks import wiring_problems


@dataclass
class Report:
    overlay: str
    objects: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())


def manifest_problems(objects: list[Object]) -> dict[str, list[str]]:
    """Problems of rendered objects, by check."""
    manifests = Manifests(objects)
    return {
        f"schemas (strict, Kubernetes {' and '.join(VERSIONS)})": schema_problems(objects),
        "hardening, autoscalers, disruption budgets, references": hardening_problems(manifests),
        "wiring against the services' own settings": wiring_problems(manifests),
        "network policies": network_problems(manifests),
    }


def image_problems() -> list[str]:
    return [problem for path in DOCKERFILES.values() for problem in check(parse(REPO_ROOT / path))]


def validate(overlay: str) -> Report:
    objects = render(overlay)
    return Report(overlay, len(objects), manifest_problems(objects))


def print_report(report: Report) -> None:
    print(f"overlay {report.overlay}: {report.objects} objects")
    for name, problems in report.problems.items():
        print(f"  {'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"         - {problem}")
