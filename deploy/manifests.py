"""A rendered overlay, indexed the way the checks ask questions of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deploy.render import Object

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


@dataclass
class Container:
    workload: Object
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}:{self.spec['name']}"

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]["spec"]

    def port(self, ref: int | str) -> int | None:
        """A port number from a number or a named container port."""
        for port in self.spec.get("ports", []):
            if ref in (port["containerPort"], port.get("name")):
                return int(port["containerPort"])
        return None

    def mount_for(self, path: str) -> dict[str, Any] | None:
        """The volume mounted at or above `path`, or None."""
        best = None
        for mount in self.spec.get("volumeMounts", []):
            root = mount["mountPath"].rstrip("/")
            if (path == root or path.startswith(root + "/")) and (best is None or len(root) > len(best[0])):
                best = (root, mount)
        if best is None:
            return None
        volume = next((v for v in self.pod.get("volumes", []) if v["name"] == best[1]["name"]), None)
        return {"mount": best[1], "volume": volume}


class Manifests:
    def __init__(self, objects: list[Object]) -> None:
        self.objects = objects

    def of_kind(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> Object | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def workloads(self) -> list[Object]:
        return [o for o in self.objects if o.get("kind") in WORKLOAD_KINDS]

    def containers(self) -> Iterator[Container]:
        for workload in self.workloads():
            for spec in workload["spec"]["template"]["spec"].get("containers", []):
                yield Container(workload, spec)

    def pods_selected_by(self, selector: dict[str, str]) -> list[Object]:
        """Workloads whose pod template labels carry every selector pair."""
        return [w for w in self.workloads() if selects(selector, pod_labels(w))]

    def services_for(self, workload: Object) -> list[Object]:
        return [s for s in self.of_kind("Service") if selects(s["spec"].get("selector") or {}, pod_labels(workload))]

    def config_map_data(self, name: str) -> dict[str, str] | None:
        config_map = self.get("ConfigMap", name)
        return None if config_map is None else dict(config_map.get("data", {}))


def pod_labels(workload: Object) -> dict[str, str]:
    return workload["spec"]["template"].get("metadata", {}).get("labels", {}) or {}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
