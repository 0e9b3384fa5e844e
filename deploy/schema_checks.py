"""Strict validation of every rendered object against the official Kubernetes JSON schemas."""

from __future__ import annotations

import functools
import json

import kubernetes_validate

from deploy.render import Object, object_id

# The oldest Kubernetes Funnel supports, and the newest kubernetes-validate ships.
OLDEST_SUPPORTED = "1.30.0"
VERSIONS = (OLDEST_SUPPORTED, kubernetes_validate.latest_version())


def schema_problems(objects: list[Object], versions: tuple[str, ...] = VERSIONS) -> list[str]:
    """Unknown fields, wrong types and missing required fields, per object and version."""
    return [
        problem
        for version in versions
        for obj in objects
        for problem in _problems(json.dumps(obj, sort_keys=True), version)
    ]


# kubernetes-validate loads its schemas anew on every call (about 25 ms an object); an unchanged
# object need not be validated twice.
@functools.lru_cache(maxsize=4096)
def _problems(serialized: str, version: str) -> tuple[str, ...]:
    obj = json.loads(serialized)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(part) for part in exc.path)
        return (f"{object_id(obj)} (Kubernetes {version}): {where}: {exc.message}",)
    except kubernetes_validate.SchemaNotFoundError:
        return (f"{object_id(obj)}: no schema for {obj.get('apiVersion')} in Kubernetes {version}",)
    return ()
