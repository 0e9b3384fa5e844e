"""A stand-in for the Kubernetes API server, on loopback, for the deploy command's tests.

There is no cluster on these machines. This server answers the handful of endpoints the deploy
command calls, the way the API server does (paths, verbs, content types, dry-run, list selectors),
builds its replies from the `kubernetes` client's own models, and records every request so that a
test can see exactly what would have reached a real cluster.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from kubernetes import client

_SERIALIZER = client.ApiClient()
_OBJECT_PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)/(?P<name>[^/]+)(?P<sub>/scale)?$"
)
_LIST_PATH = re.compile(r"^/apis/[^/]+/[^/]+/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class FakeKubeApi:
    reject: set[str] = field(default_factory=set)  # "Kind/name" answered 422
    requests: list[Request] = field(default_factory=list)
    stored: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (plural, namespace, name)
    ready: dict[str, int] = field(default_factory=dict)  # deployment -> ready replicas

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_PATCH(self) -> None:
                api._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "secret-token"}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    # -- the API -----------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        body = yaml.safe_load(raw) if raw else None
        query = parse_qs(url.query)
        self.requests.append(Request(method, url.path, query, content_type, body))
        if handler.headers.get("Authorization") != "Bearer secret-token":
            return self._reply(handler, 401, self._status(401, "Unauthorized", "no valid token"))
        status, reply = self._route(method, url.path, query, content_type, body)
        self._reply(handler, status, reply)

    def _route(self, method: str, path: str, query: dict, content_type: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path in ("/version", "/version/"):
            info = client.VersionInfo(
                major="1",
                minor="30",
                git_version="v1.30.0",
                git_commit="fake",
                git_tree_state="clean",
                build_date="2026-01-01T00:00:00Z",
                go_version="go1.22",
                compiler="gc",
                platform="linux/amd64",
            )
            return 200, _SERIALIZER.sanitize_for_serialization(info)
        listing = _LIST_PATH.match(path)
        if method == "GET" and listing:
            return 200, self._list(listing["plural"], listing["ns"], query.get("labelSelector", [""])[0])
        match = _OBJECT_PATH.match(path)
        if method != "PATCH" or not match:
            return 404, self._status(404, "NotFound", f"{method} {path}")
        key = (match["plural"], match["ns"] or "", match["name"])
        if match["sub"]:
            return self._scale(key, content_type, body)
        if content_type == "application/merge-patch+json":
            if key not in self.stored:
                return 404, self._status(404, "NotFound", f"{key}")
            _merge(self.stored[key], body)
            return 200, self.stored[key]
        if content_type != "application/apply-patch+yaml" or query.get("fieldManager") is None:
            return 415, self._status(415, "UnsupportedMediaType", f"{content_type} without fieldManager")
        name = f"{body['kind']}/{body['metadata']['name']}"
        if name in self.reject:
            return 422, self._status(422, "Invalid", f"{name} is invalid: spec: Forbidden")
        applied = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}", "generation": 1}}
        if query.get("dryRun") != ["All"]:
            self.stored[key] = applied
        return 200, applied

    def _scale(self, key: tuple[str, str, str], content_type: str, body: Any) -> tuple[int, Any]:
        deployment = self.stored.get(key)
        if deployment is None or content_type != "application/merge-patch+json":
            return 404, self._status(404, "NotFound", f"scale of {key}")
        deployment["spec"]["replicas"] = body["spec"]["replicas"]
        scale = client.V1Scale(
            api_version="autoscaling/v1",
            kind="Scale",
            metadata=client.V1ObjectMeta(name=key[2], namespace=key[1]),
            spec=client.V1ScaleSpec(replicas=body["spec"]["replicas"]),
        )
        return 200, _SERIALIZER.sanitize_for_serialization(scale)

    def _list(self, plural: str, namespace: str, selector: str) -> dict:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = []
        for (kind, ns, name), obj in self.stored.items():
            labels = obj["metadata"].get("labels", {})
            if kind == plural and ns == namespace and all(labels.get(k) == v for k, v in wanted.items()):
                item = json.loads(json.dumps(obj))
                if plural == "deployments":
                    replicas = item["spec"].get("replicas", 1)
                    ready = min(self.ready.get(name, 0), replicas)
                    item["status"] = {
                        "observedGeneration": 1,
                        "replicas": replicas,
                        "readyReplicas": ready,
                        "updatedReplicas": replicas,
                    }
                items.append(item)
        kind = {"deployments": "DeploymentList", "horizontalpodautoscalers": "HorizontalPodAutoscalerList"}[plural]
        return {"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items}

    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict:
        status = client.V1Status(
            api_version="v1", kind="Status", status="Failure", code=code, reason=reason, message=message
        )
        return _SERIALIZER.sanitize_for_serialization(status)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, reply: Any) -> None:
        data = json.dumps(reply).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
