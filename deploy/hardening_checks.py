"""What every workload must have: resources, probes, a hardened securityContext, an autoscaler,
a disruption budget, and references that resolve."""

from __future__ import annotations

from deploy.manifests import Container, Manifests, pod_labels, selects
from deploy.render import Object, object_id

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def hardening_problems(manifests: Manifests) -> list[str]:
    problems: list[str] = []
    for container in manifests.containers():
        problems += _container_problems(container)
    for workload in manifests.workloads():
        problems += _pod_problems(workload)
        problems += _reference_problems(manifests, workload)
    for deployment in manifests.of_kind("Deployment"):
        problems += _scaling_problems(manifests, deployment)
    for service in manifests.of_kind("Service"):
        problems += _service_problems(manifests, service)
    return problems


def _container_problems(container: Container) -> list[str]:
    spec, name = container.spec, container.name
    problems = []
    resources = spec.get("resources", {})
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problems.append(f"{name}: no {resource} {part[:-1]}")
    if container.workload["kind"] == "Deployment":
        problems += [f"{name}: no {probe}" for probe in PROBES if probe not in spec]
    security = spec.get("securityContext", {})
    expected = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    for key, value in expected.items():
        if security.get(key) is not value:
            problems.append(f"{name}: securityContext.{key} must be {str(value).lower()}")
    if security.get("privileged"):
        problems.append(f"{name}: must not be privileged")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append(f"{name}: securityContext.capabilities.drop must be [ALL]")
    pod_security = container.pod.get("securityContext", {})
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append(f"{name}: runAsNonRoot must be true")
    if 0 in (security.get("runAsUser"), pod_security.get("runAsUser")):
        problems.append(f"{name}: runs as uid 0")
    seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        problems.append(f"{name}: seccompProfile must be RuntimeDefault")
    tmp = container.mount_for("/tmp")
    if tmp is None or tmp["mount"]["mountPath"] != "/tmp" or "emptyDir" not in (tmp["volume"] or {}):
        problems.append(f"{name}: /tmp must be an emptyDir (the root filesystem is read-only)")
    image = spec.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
        problems.append(f"{name}: image {image!r} has no pinned tag")
    return problems


def _pod_problems(workload: Object) -> list[str]:
    pod = workload["spec"]["template"]["spec"]
    if pod.get("automountServiceAccountToken") is not False:
        return [f"{object_id(workload)}: automountServiceAccountToken must be false (no stage calls the API)"]
    return []


def _reference_problems(manifests: Manifests, workload: Object) -> list[str]:
    pod, name = workload["spec"]["template"]["spec"], object_id(workload)
    problems = []
    account = pod.get("serviceAccountName")
    if account and manifests.get("ServiceAccount", account) is None:
        problems.append(f"{name}: ServiceAccount {account} does not exist")
    for volume in pod.get("volumes", []):
        if "configMap" in volume and manifests.get("ConfigMap", volume["configMap"]["name"]) is None:
            problems.append(f"{name}: volume {volume['name']} names a missing ConfigMap {volume['configMap']['name']}")
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and manifests.get("PersistentVolumeClaim", claim) is None:
            problems.append(f"{name}: volume {volume['name']} names a missing claim {claim}")
    for container in pod.get("containers", []):
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            if ref and manifests.get("ConfigMap", ref) is None:
                problems.append(f"{name}: envFrom names a missing ConfigMap {ref}")
    return problems


def _scaling_problems(manifests: Manifests, deployment: Object) -> list[str]:
    name, labels = object_id(deployment), pod_labels(deployment)
    problems = []
    if not selects(deployment["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append(f"{name}: selector does not match its pod template labels")
    autoscalers = [
        h
        for h in manifests.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        and h["spec"]["scaleTargetRef"].get("name") == deployment["metadata"]["name"]
    ]
    if len(autoscalers) != 1:
        problems.append(f"{name}: needs exactly one HorizontalPodAutoscaler, has {len(autoscalers)}")
    for hpa in autoscalers:
        low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        replicas = deployment["spec"].get("replicas", 1)
        if not low <= replicas <= high:
            problems.append(f"{name}: {replicas} replicas outside its autoscaler's range {low}..{high}")
    budgets = [
        p for p in manifests.of_kind("PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)
    ]
    if len(budgets) != 1:
        problems.append(f"{name}: needs exactly one PodDisruptionBudget selecting its pods, has {len(budgets)}")
    for budget in budgets:
        others = [
            object_id(w)
            for w in manifests.pods_selected_by(budget["spec"]["selector"]["matchLabels"])
            if w is not deployment
        ]
        if others:
            problems.append(f"{object_id(budget)}: also selects {', '.join(others)}")
    return problems


def _service_problems(manifests: Manifests, service: Object) -> list[str]:
    name = object_id(service)
    targets = manifests.pods_selected_by(service["spec"].get("selector") or {})
    if not targets:
        return [f"{name}: selects no pods"]
    problems = []
    for workload in targets:
        containers = [Container(workload, c) for c in workload["spec"]["template"]["spec"]["containers"]]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if not any(c.port(target) for c in containers):
                problems.append(f"{name}: port {port['port']} targets {target!r}, which {object_id(workload)} lacks")
    return problems
