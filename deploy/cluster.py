"""Talking to a cluster through the official `kubernetes` client: connect, apply, scale, status."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from deploy.render import Object, object_id

FIELD_MANAGER = "funnel-deploy"
PART_OF = "app.kubernetes.io/part-of=funnel"
STAGES = ("gateway", "retrieval", "ranking", "reranking", "triton")
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


class ClusterError(RuntimeError):
    """No cluster, or the cluster refused: the message says which and what to do."""


def connect(context: str | None = None, timeout_s: float = 5.0) -> client.ApiClient:
    """A client for the in-cluster service account, else the kubeconfig (KUBECONFIG or ~/.kube/config).

    Asks the server for its version first, so that a missing or unreachable cluster is reported
    plainly here rather than as a stack trace from the first real call.
    """
    # Read KUBECONFIG now: the client reads it once, when it is first imported.
    where = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=where, context=context)
    except (ConfigException, OSError) as exc:
        raise ClusterError(f"no Kubernetes configuration: {exc} (looked in-cluster and at {where})") from None
    api_client = client.ApiClient()
    host = api_client.configuration.host
    try:
        client.VersionApi(api_client).get_code(_request_timeout=timeout_s)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ClusterError(f"no cluster reachable at {host}: {_reason(exc)}") from None
    except ApiException as exc:
        raise ClusterError(f"the cluster at {host} refused: {exc.status} {exc.reason}") from None
    return api_client


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)


def _api(api_client: client.ApiClient, api_version: str) -> Any:
    """`apps/v1` -> AppsV1Api, `v1` -> CoreV1Api, `networking.k8s.io/v1` -> NetworkingV1Api."""
    group, _, version = api_version.rpartition("/")
    name = (group.split(".")[0].capitalize() if group else "Core") + version.capitalize() + "Api"
    api_class = getattr(client, name, None)
    if api_class is None:
        raise ClusterError(f"the kubernetes client has no API for {api_version}")
    return api_class(api_client)


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


@dataclass
class Applied:
    object: str
    namespace: str
    outcome: str  # "configured", "dry-run" or the error


def apply(api_client: client.ApiClient, objects: list[Object], dry_run: bool = False) -> list[Applied]:
    """Server-side apply of every object in order (kustomize puts Namespaces first), as FIELD_MANAGER.

    Conflicts with other managers are forced: these manifests are the source of truth for the
    fields they set. With `dry_run` the server validates and admits but persists nothing.
    """
    results = []
    for obj in objects:
        api = _api(api_client, obj["apiVersion"])
        kind, name = _snake(obj["kind"]), obj["metadata"]["name"]
        namespace = obj["metadata"].get("namespace", "")
        options: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        if dry_run:
            options["dry_run"] = "All"
        try:
            if hasattr(api, f"patch_namespaced_{kind}"):
                getattr(api, f"patch_namespaced_{kind}")(name, namespace or "default", obj, **options)
            else:
                getattr(api, f"patch_{kind}")(name, obj, **options)
            results.append(Applied(object_id(obj), namespace, "dry-run" if dry_run else "configured"))
        except ApiException as exc:
            results.append(Applied(object_id(obj), namespace, f"failed: {exc.status} {exc.reason}: {_message(exc)}"))
    return results


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message", "")) or str(exc.body)
    except ValueError:
        return str(exc.body)


def _deployments(api_client: client.ApiClient, namespace: str, stage: str | None = None) -> list[Any]:
    selector = PART_OF + (f",app.kubernetes.io/component={stage}" if stage else "")
    return list(client.AppsV1Api(api_client).list_namespaced_deployment(namespace, label_selector=selector).items)


def scale(
    api_client: client.ApiClient, namespace: str, stage: str, replicas: int, shard: int | None = None
) -> list[str]:
    """Set a stage's replicas (one retrieval shard's with `shard`), and its autoscaler's floor to match.

    An autoscaler would undo a bare change of replicas within a minute; raising or lowering its
    minReplicas (and maxReplicas when below) makes the new count stick until it is scaled again.
    """
    if stage not in STAGES:
        raise ClusterError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if replicas < 0:
        raise ClusterError("replicas must be >= 0")
    deployments = _deployments(api_client, namespace, stage)
    if shard is not None:
        deployments = [d for d in deployments if (d.metadata.labels or {}).get("funnel.dev/shard") == str(shard)]
    if not deployments:
        which = f"{stage} shard {shard}" if shard is not None else stage
        raise ClusterError(f"no Deployment of {which} in namespace {namespace}")
    apps, autoscaling = client.AppsV1Api(api_client), client.AutoscalingV2Api(api_client)
    autoscalers = {
        h.spec.scale_target_ref.name: h
        for h in autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace, label_selector=PART_OF).items
    }
    done = []
    for deployment in deployments:
        name = deployment.metadata.name
        apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}}, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
        )
        note = ""
        hpa = autoscalers.get(name)
        if hpa is not None and replicas > 0:
            bounds = {"minReplicas": replicas, "maxReplicas": max(replicas, hpa.spec.max_replicas)}
            autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                hpa.metadata.name, namespace, {"spec": bounds}, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
            )
            note = f" (autoscaler {hpa.metadata.name}: {bounds['minReplicas']}..{bounds['maxReplicas']})"
        done.append(f"Deployment/{name} -> {replicas} replicas{note}")
    return done


@dataclass
class StageStatus:
    stage: str
    deployments: list[str]
    desired: int
    ready: int
    updated: int

    @property
    def ready_ok(self) -> bool:
        return bool(self.deployments) and self.ready >= self.desired and self.updated >= self.desired


def status(api_client: client.ApiClient, namespace: str) -> list[StageStatus]:
    """Readiness per stage, summed over its Deployments (every retrieval shard for retrieval)."""
    by_stage: dict[str, StageStatus] = {stage: StageStatus(stage, [], 0, 0, 0) for stage in STAGES}
    for deployment in _deployments(api_client, namespace):
        stage = (deployment.metadata.labels or {}).get("app.kubernetes.io/component")
        if stage not in by_stage:
            continue
        entry = by_stage[stage]
        entry.deployments.append(deployment.metadata.name)
        entry.desired += deployment.spec.replicas or 0
        observed = (deployment.status.observed_generation or 0) >= (deployment.metadata.generation or 0)
        entry.ready += (deployment.status.ready_replicas or 0) if observed else 0
        entry.updated += (deployment.status.updated_replicas or 0) if observed else 0
    return list(by_stage.values())
