"""The most visible defaults the real API server fills in on every write of built-in kinds.

They matter to controllers that compare a desired spec with the stored one: against a real
cluster the stored object has these fields, so a naive comparison never settles. Only a
common subset is emulated (see `apply_defaults`).
"""

from __future__ import annotations

from typing import Any

from tests.kube.registry import Obj, ResourceType


def _container(c: Any) -> None:
    if not isinstance(c, dict):
        return
    image = c.get("image")
    if isinstance(image, str) and "imagePullPolicy" not in c:
        tag = image.rpartition("/")[2].partition("@")[0]
        latest = ":" not in tag or tag.endswith(":latest")
        c["imagePullPolicy"] = "Always" if latest and "@" not in image else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _pod_spec(spec: Any, restart_policy: str | None = "Always") -> None:
    if not isinstance(spec, dict):
        return
    if restart_policy:
        spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for field in ("initContainers", "containers"):
        for c in spec.get(field) or []:
            _container(c)


def _template(spec: Obj, restart_policy: str | None = "Always") -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        _pod_spec(template.get("spec"), restart_policy)


def apply_defaults(rt: ResourceType, obj: Obj) -> None:
    """Fill in defaults in place, as the API server's defaulting does on decode."""
    group, plural = rt.group_resource
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if (group, plural) == ("", "pods"):
        _pod_spec(spec)
    elif (group, plural) == ("apps", "deployments"):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                rolling = strategy.setdefault("rollingUpdate", {})
                rolling.setdefault("maxUnavailable", "25%")
                rolling.setdefault("maxSurge", "25%")
        _template(spec)
    elif (group, plural) == ("apps", "statefulsets"):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        strategy = spec.setdefault("updateStrategy", {})
        if isinstance(strategy, dict):
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
        spec.setdefault(
            "persistentVolumeClaimRetentionPolicy",
            {"whenDeleted": "Retain", "whenScaled": "Retain"},
        )
        _template(spec)
    elif (group, plural) == ("apps", "replicasets"):
        spec.setdefault("replicas", 1)
        _template(spec)
    elif (group, plural) == ("apps", "daemonsets"):
        spec.setdefault("revisionHistoryLimit", 10)
        _template(spec)
    elif (group, plural) == ("batch", "jobs"):
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        _template(spec, restart_policy=None)
    elif (group, plural) == ("", "services"):
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])
