"""Pod templates: our container, the secure defaults, and the user's ``podTemplate`` merged in.

The merge (:func:`merge`), applied to the user's ``podTemplate`` (a Pod template:
``metadata`` and ``spec``) over ours:

- maps merge recursively; for a scalar, or where the two sides disagree in type, the
  user's value wins; a user's ``null`` removes our key (as in a strategic merge patch);
- lists whose items have a merge key merge item by item: ``containers``,
  ``initContainers``, ``ephemeralContainers``, ``env``, ``volumes`` and
  ``imagePullSecrets`` by ``name``, ``volumeMounts`` by ``mountPath``, ``ports`` by
  ``containerPort``; so a user container named ``jobmanager`` (or ``taskmanager``) is
  merged into ours, any other is a sidecar;
- ``command`` is replaced; every other list (``tolerations``, ``args``,
  ``topologySpreadConstraints``, ``capabilities.drop``...) gets the user's items appended.
  Appended ``args`` can override our flags: the runtime's parser keeps the last one.

The user wins everywhere, the secure defaults included (a cluster may need, say,
another ``runAsUser``), with one exception: the labels the Deployment's selector uses
are put back after the merge, so a template can never stop matching its selector.
Weakened defaults are not silent: :func:`security_overrides` lists them. What would hand
the node to whoever can write a StreamJob (the operator creates the pods, so it must
not be a confused deputy) is refused unless the operator allows it: planning reports
what :func:`privileged_settings` finds as a validation error (chart value
``podTemplate.allowPrivileged``).

Secure defaults: the pod runs as UID/GID 10001 (the image's user; numeric, so the
kubelet can check ``runAsNonRoot``) with ``fsGroup`` 10001 (volumes such as the
checkpoint PVC become writable; ownership changes only when the volume root's
differs), the RuntimeDefault seccomp profile, and our container with a read-only root
filesystem, no privilege escalation and every capability dropped. ``/tmp`` is an
emptyDir and ``HOME`` points there.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from streamjob_operator.api import models
from streamjob_operator.desired import metadata, target

USER_ID = 10001

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": USER_ID,
    "runAsGroup": USER_ID,
    "fsGroup": USER_ID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
TMP_VOLUME = "tmp"
TMP_PATH = "/tmp"

_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
_REPLACED = frozenset({"command"})


def merge(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """``theirs`` merged over ``ours`` by the rules in the module doc; neither is modified."""
    merged = copy.deepcopy(dict(ours))
    for key, value in theirs.items():
        mine = merged.get(key)
        if value is None:
            merged.pop(key, None)
        elif isinstance(mine, dict) and isinstance(value, dict):
            merged[key] = merge(mine, value)
        elif isinstance(mine, list) and isinstance(value, list) and key not in _REPLACED:
            merged[key] = _merge_list(_MERGE_KEYS.get(key), mine, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_list(key: str | None, ours: list[Any], theirs: list[Any]) -> list[Any]:
    merged = list(ours)
    for item in theirs:
        if key is not None and isinstance(item, dict) and key in item:
            for i, mine in enumerate(merged):
                if isinstance(mine, dict) and mine.get(key) == item[key]:
                    merged[i] = merge(mine, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        else:
            merged.append(copy.deepcopy(item))
    return merged


def environment() -> list[dict[str, Any]]:
    """The pod's name, namespace and IP (downward API), which the flags refer to as $(...)."""

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    return [
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("POD_IP", "status.podIP"),
        {"name": "HOME", "value": TMP_PATH},
    ]


def resources(spec: models.Resources) -> dict[str, Any]:
    """Requests equal to limits: the pod is Guaranteed, and never throttled below what it asked."""
    amounts = {"cpu": spec.cpu, "memory": spec.memory}
    return {"requests": dict(amounts), "limits": dict(amounts)}


def build(
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    container: Mapping[str, Any],
    user_template: Mapping[str, Any] | None,
    *,
    service_account: str,
    kubernetes_api: bool,
    volumes: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The pod template: ``container`` with the secure defaults, then the user's template.

    ``kubernetes_api`` says whether the pod talks to the API server (HA); without it no
    ServiceAccount token is mounted. ``volumes`` are the pod's besides ``/tmp`` (the
    credentials ``container`` mounts).
    """
    ours = {
        **container,
        "securityContext": CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [
            *container.get("volumeMounts", []),
            {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        ],
    }
    base = {
        "metadata": {"labels": metadata.labels(job, where, component)},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": kubernetes_api,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY_CONTEXT,
            "containers": [ours],
            "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}, *map(dict, volumes)],
        },
    }
    merged = merge(base, user_template or {})
    meta = merged.setdefault("metadata", {})
    if not isinstance(meta.get("labels"), dict):
        meta["labels"] = {}
    meta["labels"].update(metadata.selector_labels(job, where, component))
    return merged


def security_overrides(template: Mapping[str, Any], container: str) -> list[str]:
    """Where a rendered pod template departs from the secure defaults, as readable paths.

    Empty for a template whose user ``podTemplate`` kept every default. ``container``
    names ours; sidecars are the user's business.
    """
    spec = template.get("spec", {})
    found = _departures("spec.securityContext", POD_SECURITY_CONTEXT, spec.get("securityContext"))
    for i, c in enumerate(spec.get("containers", [])):
        if c.get("name") != container:
            continue
        where = f"spec.containers[{i}].securityContext"
        context = c.get("securityContext")
        found += _departures(where, CONTAINER_SECURITY_CONTEXT, context)
        added = (context or {}).get("capabilities", {}).get("add")
        if added:
            found.append(f"{where}.capabilities.add: {added!r} (default: none)")
        if (context or {}).get("privileged"):
            found.append(f"{where}.privileged: True (default: False)")
    return found


def _departures(path: str, defaults: Mapping[str, Any], actual: Any) -> list[str]:
    found: list[str] = []
    actual = actual if isinstance(actual, dict) else {}
    for key, default in defaults.items():
        value = actual.get(key)
        if isinstance(default, dict):
            found += _departures(f"{path}.{key}", default, value)
        elif isinstance(default, list):
            missing = [item for item in default if item not in (value or [])]
            if missing:
                found.append(f"{path}.{key}: {value!r} lacks {missing!r}")
        elif value != default:
            found.append(f"{path}.{key}: {value!r} (default: {default!r})")
    return found


_HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _context(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def privileged_settings(user_template: Mapping[str, Any] | None, container: str) -> list[str]:
    """What ``user_template`` (a ``podTemplate``) asks for that only a trusted pod may have,
    as ``<path>: <why>`` lines: privileged containers, host namespaces (``hostNetwork``,
    ``hostPID``, ``hostIPC``), host ports, ``hostPath`` volumes, added capabilities, and
    running as root (``runAsUser: 0``, or ``runAsNonRoot`` not true, after our defaults:
    ``container`` names our container, which keeps its defaults unless overridden).

    Empty for a template that keeps to the secure defaults.
    """
    template = user_template or {}
    spec = _context(template.get("spec"))
    found = [f"spec.{key}: true (a host namespace)" for key in _HOST_NAMESPACES if spec.get(key)]
    for i, volume in enumerate(spec.get("volumes") or []):
        if isinstance(volume, dict) and volume.get("hostPath") is not None:
            found.append(f"spec.volumes[{i}].hostPath: a directory of the node")
    pod_context = merge(POD_SECURITY_CONTEXT, _context(spec.get("securityContext")))
    ours_listed = False
    for field in _CONTAINER_LISTS:
        for i, c in enumerate(spec.get(field) or []):
            if not isinstance(c, dict):
                continue
            where = f"spec.{field}[{i}]"
            context = _context(c.get("securityContext"))
            if field == "containers" and c.get("name") == container:
                ours_listed = True
                context = merge(CONTAINER_SECURITY_CONTEXT, context)
            found += _container_findings(where, context, pod_context)
            for j, port in enumerate(c.get("ports") or []):
                if isinstance(port, dict) and port.get("hostPort"):
                    found.append(f"{where}.ports[{j}].hostPort: {port['hostPort']} (a node port)")
    if not ours_listed:
        found += _container_findings(
            f"the {container} container", CONTAINER_SECURITY_CONTEXT, pod_context
        )
    return found


def _container_findings(
    where: str, context: Mapping[str, Any], pod_context: Mapping[str, Any]
) -> list[str]:
    found = []
    if context.get("privileged"):
        found.append(f"{where}.securityContext.privileged: true")
    added = _context(context.get("capabilities")).get("add")
    if added:
        found.append(f"{where}.securityContext.capabilities.add: {added!r}")
    user = context.get("runAsUser", pod_context.get("runAsUser"))
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    if user == 0:
        found.append(f"{where}: runs as root (runAsUser: 0)")
    elif non_root is not True:
        found.append(
            f"{where}: may run as root (runAsNonRoot is {non_root!r} for it; it must be true)"
        )
    return found
