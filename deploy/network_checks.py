"""Which pod may open a connection to which, under the rendered NetworkPolicies.

A small evaluator of the NetworkPolicy semantics the manifests use (pod and namespace selectors by
label, ports by number, one namespace): a connection is allowed when the source's egress and the
destination's ingress both allow it, where a pod no policy selects for a direction is open.
"""

from __future__ import annotations

from deploy.manifests import Manifests, pod_labels
from deploy.render import Object

# (source component, destination component, port): the calls the funnel makes.
REQUIRED = (
    ("gateway", "retrieval", 50061),
    ("gateway", "ranking", 50071),
    ("gateway", "reranking", 50081),
    ("ranking", "triton", 8001),
    ("gateway", "online-store", 6379),
    ("events", "online-store", 6379),
)
# Calls nothing should be able to make: stages reaching past the gateway, anything but ranking at Triton.
FORBIDDEN = (
    ("retrieval", "triton", 8001),
    ("gateway", "triton", 8001),
    ("reranking", "ranking", 50071),
    ("retrieval", "reranking", 50081),
    ("ranking", "retrieval", 50061),
    ("triton", "ranking", 50071),
    ("retrieval", "online-store", 6379),
    ("ranking", "online-store", 6379),
    ("events", "ranking", 50071),
)


def _matches(selector: dict, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def _peer_allows(peer: dict, labels: dict[str, str], namespace: str, own_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pod-to-pod traffic is judged by selectors here
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        if namespace != own_namespace:
            return False
    elif not _matches(namespace_selector, {"kubernetes.io/metadata.name": namespace}):
        return False
    return _matches(peer.get("podSelector", {}), labels)


def _rule_allows(rule: dict, peers_key: str, labels: dict[str, str], namespace: str, own: str, port: int) -> bool:
    peers = rule.get(peers_key)
    if peers is not None and not any(_peer_allows(p, labels, namespace, own) for p in peers):
        return False
    ports = rule.get("ports")
    return ports is None or any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports)


def _direction_allows(
    policies: list[Object], direction: str, own: tuple[dict[str, str], str], peer: tuple[dict[str, str], str], port: int
) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "") == own[1]
        and _matches(p["spec"].get("podSelector", {}), own[0])
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    return any(
        _rule_allows(rule, peers_key, peer[0], peer[1], own[1], port)
        for p in selecting
        for rule in p["spec"].get(key, [])
    )


def allowed(manifests: Manifests, source: dict[str, str], destination: dict[str, str], port: int) -> bool:
    """May a pod labelled `source` open TCP `port` on a pod labelled `destination` (same namespace)?"""
    policies = manifests.of_kind("NetworkPolicy")
    namespace = policies[0]["metadata"].get("namespace", "") if policies else ""
    return _direction_allows(policies, "Egress", (source, namespace), (destination, namespace), port) and (
        _direction_allows(policies, "Ingress", (destination, namespace), (source, namespace), port)
    )


def _labels_of(manifests: Manifests, component: str) -> dict[str, str] | None:
    workloads = manifests.pods_selected_by({"app.kubernetes.io/component": component})
    return pod_labels(workloads[0]) if workloads else None


def triton_beside_ranking(manifests: Manifests) -> bool:
    """Whether every ranking pod runs Triton beside it, serving gRPC on loopback only."""
    pods = manifests.pods_selected_by({"app.kubernetes.io/component": "ranking"})
    return bool(pods) and all(
        any("--grpc-address=127.0.0.1" in c.get("args", []) for c in pod["spec"]["template"]["spec"]["containers"])
        for pod in pods
    )


def network_problems(manifests: Manifests) -> list[str]:
    """Required calls that are blocked and forbidden ones that are open (only where policies exist)."""
    if not manifests.of_kind("NetworkPolicy"):
        return []
    problems = []
    sidecar = _labels_of(manifests, "triton") is None and triton_beside_ranking(manifests)
    for (source, destination, port), wanted in [(edge, True) for edge in REQUIRED] + [(e, False) for e in FORBIDDEN]:
        if sidecar and "triton" in (source, destination):
            continue  # Triton listens on loopback in ranking's pods: no other pod can reach it at all
        src, dst = _labels_of(manifests, source), _labels_of(manifests, destination)
        if src is None or dst is None:
            problems.append(
                f"network: no {source if src is None else destination} pods to check {source} -> {destination}"
            )
            continue
        if allowed(manifests, src, dst, port) != wanted:
            verb = "blocked" if wanted else "open"
            problems.append(f"network: {source} -> {destination}:{port} is {verb}")
    stranger = {"app.kubernetes.io/part-of": "funnel", "app.kubernetes.io/component": "stranger"}
    if allowed(manifests, stranger, _labels_of(manifests, "ranking") or {}, 50071):
        problems.append("network: an arbitrary Funnel pod can reach ranking: the default is not deny")
    return problems
