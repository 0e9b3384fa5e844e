"""The configuration reference, `docs/configuration.md`, generated from the settings classes that
every process loads its flags and environment with: the document cannot drift from the code, and
`tests/test_configuration_reference.py` fails when it was not regenerated (`make docs`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from deploy.imports import REPO_ROOT
from funnel.runtime.config import ServerSettings, env_name, flag_name
from services.events.settings import EventsSettings
from services.gateway.settings import GatewaySettings
from services.ranking.settings import RankingSettings
from services.reranking.settings import RerankingSettings
from services.retrieval.settings import RetrievalSettings

REFERENCE = REPO_ROOT / "docs" / "configuration.md"
# (process, entry module, settings class), in the order a request meets them.
PROCESSES: tuple[tuple[str, str, type[ServerSettings]], ...] = (
    ("gateway", "services.gateway", GatewaySettings),
    ("retrieval", "services.retrieval", RetrievalSettings),
    ("ranking", "services.ranking", RankingSettings),
    ("re-ranking", "services.reranking", RerankingSettings),
    ("events", "services.events", EventsSettings),
)

HEADER = """# Configuration

Generated from the settings classes by `make docs` (`python -m deploy configuration`); do not edit by
hand: `tests/test_configuration_reference.py` fails when this file and the code disagree.

Every process reads each setting from its flag, else its `FUNNEL_*` environment variable, else the
default, and exits with status 2, naming every problem at once, before it binds a port.
`python -m <module> --help` lists the same settings. Kubernetes sets them as environment variables
(`k8s/`); `make up` passes flags (`launcher/stack.py`).
"""


def _default(field: dataclasses.Field) -> str:
    if field.default is dataclasses.MISSING:
        return "required"
    value: Any = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`" if value != "" else "empty"


def _row(field: dataclasses.Field) -> str:
    meaning = field.metadata["help"].replace("|", "\\|")
    return f"| `{flag_name(field.name)}` | `{env_name(field.name)}` | {_default(field)} | {meaning} |"


def _table(fields: list[dataclasses.Field]) -> list[str]:
    return ["| flag | environment | default | meaning |", "|---|---|---|---|", *(_row(f) for f in fields)]


def _fields(cls: type[ServerSettings]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _declared_alike(name: str) -> bool:
    """Whether every process declares the common setting `name` with the same default and meaning
    (the port, say, has a default of its own in each)."""
    base = _fields(ServerSettings)[name]
    return all(
        (own := _fields(cls)[name]).default == base.default and own.metadata["help"] == base.metadata["help"]
        for _, _, cls in PROCESSES
    )


def reference() -> str:
    shared = [name for name in _fields(ServerSettings) if _declared_alike(name)]
    lines = [HEADER, "## Every process", "", *_table([_fields(ServerSettings)[name] for name in shared]), ""]
    for process, module, cls in PROCESSES:
        own = [field for name, field in _fields(cls).items() if name not in shared]
        lines += [f"## {process} (`python -m {module}`)", "", *_table(own), ""]
    return "\n".join(lines)


def write(path: Path = REFERENCE) -> Path:
    path.write_text(reference())
    return path


def is_current(path: Path = REFERENCE) -> bool:
    return path.exists() and path.read_text() == reference()
