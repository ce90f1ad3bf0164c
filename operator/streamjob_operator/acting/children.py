"""Writing a StreamJob's children: apply (create or replace), delete Deployments and HA metadata.

Apply approximates server-side apply with a read and a write: an object that does not
exist is created (POST); one that exists is replaced (PUT, with the stored
``resourceVersion`` as precondition) unless it already holds everything the manifest
says and carries the manifest's hash (``streamjob.dev/desired-hash``), in which case
nothing is written. The hash catches what a field-by-field comparison cannot: a field
the manifest no longer has. The comparison tolerates what the API server adds
(defaults, status, bookkeeping metadata). A Service keeps its ``clusterIP``, which
cannot change. Replacing is what Deployments need (their pod template is ours
whole); for the other kinds it also removes anyone else's edits, by design.

:func:`apply_all` applies a whole set of children (``desired.children``, TaskManager
Deployment last) and stamps that last Deployment with the hash of the set
(``streamjob.dev/children-hash``). :func:`applied` tells from the two Deployments alone
that the same set was applied before (the stamp is written only once every other child
was), so a pass that would apply it again need not read the other children. A child
other than the Deployments deleted by hand is then re-created at the next change of the
set, not at the next pass.

An object controlled by something else (an owner reference with ``controller: true``
and another uid) is never replaced: that is a name clash, reported as an error. An
object without a controller is adopted.

Deleting a Deployment is in the foreground: it stays (with a ``deletionTimestamp``)
until its pods are gone, so observing sees it PROGRESSING, not ABSENT, while old
pods still run. A delete of something already gone (404) is done.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_operator.desired import children as desired_children
from streamjob_operator.desired import ha, metadata, network, target
from streamjob_operator.observing import children as observed_children
from streamjob_operator.observing import kubeapi

HASH_ANNOTATION = "streamjob.dev/desired-hash"
CHILDREN_HASH_ANNOTATION = "streamjob.dev/children-hash"

Obj = kubeapi.Obj


class ApplyRefused(RuntimeError):
    """The object cannot be applied as it stands; the message says why and what to do."""


def desired_hash(manifest: Obj) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _annotated(manifest: Obj, key: str, value: str) -> Obj:
    """``manifest`` with one more annotation: a new top and metadata, the rest shared
    with ``manifest`` (treat both as read-only; copy before changing either)."""
    meta = manifest["metadata"]
    annotations = {**(meta.get("annotations") or {}), key: value}
    return {**manifest, "metadata": {**meta, "annotations": annotations}}


def with_hash(manifest: Obj) -> Obj:
    return _annotated(manifest, HASH_ANNOTATION, desired_hash(manifest))


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def covers(stored: Any, desired: Any) -> bool:
    """Whether ``stored`` holds everything ``desired`` says (more is fine; an empty value
    and an absent one are the same)."""
    if isinstance(desired, dict):
        if not isinstance(stored, dict):
            return _empty(stored) and _empty(desired)
        return all(
            covers(stored[key], value) if key in stored else _empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(stored, list):
            return _empty(stored) and not desired
        return len(stored) == len(desired) and all(
            covers(s, d) for s, d in zip(stored, desired, strict=True)
        )
    return bool(stored == desired)


def _controller(obj: Obj) -> dict[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def _describe(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta['namespace']}/{meta['name']}"


async def create(api: client.ApiClient, manifest: Obj) -> bool:
    """Create ``manifest`` (with its hash) without reading first; False when an object of
    its name exists (409), which is left as it is."""
    try:
        await kubeapi.request(
            api, "POST", kubeapi.collection_of(manifest), body=with_hash(manifest)
        )
    except ApiException as e:
        if e.status != 409:
            raise
        return False
    return True


async def apply(api: client.ApiClient, manifest: Obj, *, create_first: bool = False) -> str:
    """Create or replace ``manifest``; returns "created", "replaced" or "unchanged".

    ``create_first``: POST before reading (one request instead of two when it is new, as
    every child of a first deployment is); it exists (409): read and go on as usual."""
    desired = with_hash(manifest)
    if create_first:
        try:
            await kubeapi.request(api, "POST", kubeapi.collection_of(manifest), body=desired)
            return "created"
        except ApiException as e:
            if e.status != 409:
                raise
    stored = await kubeapi.get(api, kubeapi.path_of(manifest))
    if stored is None:
        await kubeapi.request(api, "POST", kubeapi.collection_of(manifest), body=desired)
        return "created"
    meta = stored.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        raise ApplyRefused(
            f"{_describe(manifest)} is being deleted; it is created again once it is gone"
        )
    ours = _controller(manifest)
    theirs = _controller(stored)
    if theirs is not None and ours is not None and theirs.get("uid") != ours.get("uid"):
        raise ApplyRefused(
            f"{_describe(manifest)} exists and is controlled by {theirs.get('kind')}"
            f" {theirs.get('name')}, not by this StreamJob: rename the StreamJob or remove"
            " that object"
        )
    annotations = meta.get("annotations") or {}
    if annotations.get(HASH_ANNOTATION) == desired_hash(manifest) and covers(stored, desired):
        return "unchanged"
    body = copy.deepcopy(desired)
    body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
    if manifest["kind"] == "Service":
        for key in ("clusterIP", "clusterIPs"):
            value = (stored.get("spec") or {}).get(key)
            if value is not None:
                body["spec"].setdefault(key, value)
    await kubeapi.request(api, "PUT", kubeapi.path_of(manifest), body=body)
    return "replaced"


def children_hash(manifests: list[Obj]) -> str:
    """The hash of a set of children, as :func:`stamped` stamps it."""
    return desired_hash({"children": manifests})


def stamped(manifests: list[Obj], set_hash: str | None = None) -> list[Obj]:
    """``manifests`` with the last (the TaskManager Deployment) annotated with the hash
    of them all (``set_hash``, when the caller has it: :func:`children_hash`)."""
    if not manifests:
        return manifests
    digest = set_hash if set_hash is not None else children_hash(manifests)
    return [*manifests[:-1], _annotated(manifests[-1], CHILDREN_HASH_ANNOTATION, digest)]


class Applied(enum.Enum):
    """What the Deployments of a set of children say of it (:func:`applied`)."""

    SAME = "same"  # applied as it is: nothing to do
    ABSENT = "absent"  # no Deployment of it exists: a first deployment, most likely
    OTHER = "other"  # applied otherwise, or partly, or being deleted


async def applied(
    api: client.ApiClient,
    manifests: list[Obj],
    read: observed_children.Read | None = None,
    set_hash: str | None = None,
) -> Applied:
    """Whether ``manifests`` (``desired.children``) were applied as they are: every
    Deployment among them exists and is not being deleted, and the last carries their
    hash (``set_hash``, when the caller has it). A Deployment in ``read`` (as this pass
    observed it, nothing written since) is taken from there instead of read again."""
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    if not deployments or manifests[-1] is not deployments[-1]:
        return Applied.OTHER
    expected = set_hash if set_hash is not None else children_hash(manifests)
    known = read.deployments if read is not None else {}
    stored = [
        known[p] if p in known else await kubeapi.get(api, p)
        for p in (kubeapi.path_of(m) for m in deployments)
    ]
    if all(s is None for s in stored):
        return Applied.ABSENT
    metas = [(s or {}).get("metadata") or {} for s in stored]
    if any(s is None for s in stored) or any(m.get("deletionTimestamp") for m in metas):
        return Applied.OTHER
    annotations = metas[-1].get("annotations") or {}
    same = annotations.get(CHILDREN_HASH_ANNOTATION) == expected
    return Applied.SAME if same else Applied.OTHER


async def apply_all(
    api: client.ApiClient,
    manifests: list[Obj],
    *,
    fresh: bool = False,
    set_hash: str | None = None,
) -> None:
    """Apply ``manifests`` in order, the last stamped with the hash of them all
    (``set_hash``, when the caller has it); ``fresh`` (none of their Deployments exists):
    each is created before it is read."""
    for manifest in stamped(manifests, set_hash):
        await apply(api, manifest, create_first=fresh)


async def delete(
    api: client.ApiClient, resource_path: str, propagation: str = "Background"
) -> bool:
    """Delete; True if it was there. Gone already (404) is fine."""
    try:
        await kubeapi.request(
            api, "DELETE", resource_path, query=[("propagationPolicy", propagation)]
        )
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


async def delete_deployment(
    api: client.ApiClient,
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
) -> bool:
    name = metadata.name(job, where, component)
    path = kubeapi.path("apps/v1", "deployments", job.namespace, name)
    return await delete(api, path, propagation="Foreground")


async def delete_ha_metadata(
    api: client.ApiClient, job: target.StreamJob, where: target.DeploymentTarget
) -> bool:
    """The HA ConfigMap, then the leader Lease (both absent: fine).

    The Lease goes too, so that a new JobManager need not wait out a lease its crashed
    predecessor still holds, and nothing is left behind a deleted StreamJob. In this
    order: the ConfigMap records the epoch (the Lease's transitions) its writers must
    reach, so a Lease reset under a surviving ConfigMap would fence every new leader.
    """
    cluster_id = metadata.cluster_id(job, where)
    configmap = kubeapi.path("v1", "configmaps", job.namespace, ha.configmap_name(cluster_id))
    lease = kubeapi.path(
        "coordination.k8s.io/v1", "leases", job.namespace, ha.lease_name(cluster_id)
    )
    existed = await delete(api, configmap)
    await delete(api, lease)
    return existed


async def delete_children(
    api: client.ApiClient, job: target.StreamJob, where: target.DeploymentTarget
) -> None:
    """Every child of ``where``'s cluster, Deployments first (their pods go before the
    RBAC they run with), then its HA ConfigMap. ``job`` is needed for names only."""
    manifests = desired_children.children(job, where)
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    for manifest in deployments:
        await delete(api, kubeapi.path_of(manifest), propagation="Foreground")
    for manifest in manifests:
        if manifest["kind"] != "Deployment":
            await delete(api, kubeapi.path_of(manifest))
    await delete_ha_metadata(api, job, where)


async def delete_network_policies(
    api: client.ApiClient, job: target.StreamJob, where: target.DeploymentTarget
) -> None:
    """``where``'s NetworkPolicies (absent: fine), for an operator that no longer makes them."""
    for manifest in network.network_policies(job, where, network.Settings()):
        await delete(api, kubeapi.path_of(manifest))
