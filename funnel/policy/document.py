"""The policy file: content rules every answer must obey, plus the re-ranking rule list.

version: "2026-11-29.1"
content:
  blocked_item_ids: [i0000042]
  blocked_providers: [provider-00003]
  default_max_maturity: PG13      # ceiling when the request does not name one
rules:                            # ordered; applied after content policy and exclusions
  - name: exclude_consumed
  - name: dedupe
  - name: category_cap
    max_per_category: 3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from funnel.artifacts.catalog import MATURITY_NAMES


class PolicyError(ValueError):
    """The policy file is malformed; the message names the offending entry."""


@dataclass(frozen=True)
class ContentRules:
    blocked_item_ids: frozenset[str] = frozenset()
    blocked_providers: frozenset[str] = frozenset()
    default_max_maturity: int = 3  # PG13


@dataclass(frozen=True)
class RuleSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyDocument:
    version: str
    content: ContentRules
    rules: tuple[RuleSpec, ...]


def maturity_from_name(name: str) -> int:
    if name not in MATURITY_NAMES[1:]:
        raise PolicyError(f"unknown maturity rating {name!r}; use one of {list(MATURITY_NAMES[1:])}")
    return MATURITY_NAMES.index(name)


def parse_policy(text: str, source: str = "policy") -> PolicyDocument:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: the top level must be a mapping")
    unknown = set(raw) - {"version", "content", "rules"}
    if unknown:
        raise PolicyError(f"{source}: unknown top-level keys {sorted(unknown)}")
    version = raw.get("version")
    if not isinstance(version, str | int) or not str(version):
        raise PolicyError(f"{source}: 'version' is required")

    content_raw = raw.get("content") or {}
    if not isinstance(content_raw, dict):
        raise PolicyError(f"{source}: 'content' must be a mapping")
    unknown = set(content_raw) - {"blocked_item_ids", "blocked_providers", "default_max_maturity"}
    if unknown:
        raise PolicyError(f"{source}: unknown content keys {sorted(unknown)}")
    content = ContentRules(
        blocked_item_ids=frozenset(
            _string_list(content_raw.get("blocked_item_ids"), "content.blocked_item_ids", source)
        ),
        blocked_providers=frozenset(
            _string_list(content_raw.get("blocked_providers"), "content.blocked_providers", source)
        ),
        default_max_maturity=maturity_from_name(str(content_raw.get("default_max_maturity", "PG13"))),
    )

    rules_raw = raw.get("rules") or []
    if not isinstance(rules_raw, list):
        raise PolicyError(f"{source}: 'rules' must be a list")
    rules = []
    for position, entry in enumerate(rules_raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise PolicyError(f"{source}: rules[{position}] must be a mapping with a 'name'")
        rules.append(RuleSpec(entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    return PolicyDocument(str(version), content, tuple(rules))


def load_policy(path: Path) -> PolicyDocument:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from None
    return parse_policy(text, str(path))


def _string_list(value: Any, where: str, source: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise PolicyError(f"{source}: {where} must be a list of strings")
    return [str(v) for v in value]
