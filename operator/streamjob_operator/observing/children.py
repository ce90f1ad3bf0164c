"""The StreamJob's children as Kubernetes has them: Deployment readiness, the HA metadata.

A Deployment is READY when every replica of its current generation is ready: the
controller has seen the generation (``status.observedGeneration``, when reported) and
``readyReplicas`` and ``updatedReplicas`` reach ``spec.replicas``. One being deleted
(``deletionTimestamp``; acting deletes in the foreground, so it lasts until its pods are
gone) or not yet ready is PROGRESSING; one not found is ABSENT. Whether any of its pods
is ready (``status.readyReplicas``) is read too: a JobManager without a ready pod is not
behind its Service (the Service publishes ready pods only), so observing does not ask it.

The HA metadata is the runtime's ConfigMap (``desired.ha.configmap_name``); its
``checkpoints.<job id>`` entry is JSON with the retained checkpoints (``retained``: a
list of ``{"checkpoint_id", "path", "kind"}``). That format belongs to the runtime
(``streamjob_runtime.ha.services.CheckpointRecord``), which the operator may not import;
a test keeps the two in step, and an entry that does not parse counts as none.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from kubernetes_asyncio import client

from streamjob_operator.desired import ha, metadata, target
from streamjob_operator.observing import kubeapi
from streamjob_operator.planning import observed

State = observed.DeploymentState


def deployment_state(deployment: Mapping[str, Any] | None) -> State:
    if deployment is None:
        return State.ABSENT
    meta = deployment.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return State.PROGRESSING
    replicas = int((deployment.get("spec") or {}).get("replicas", 1))
    status = deployment.get("status") or {}
    seen = status.get("observedGeneration")
    if seen is not None and int(seen) < int(meta.get("generation") or 0):
        return State.PROGRESSING
    ready = int(status.get("readyReplicas") or 0)
    updated = status.get("updatedReplicas")
    if ready < replicas or (updated is not None and int(updated) < replicas):
        return State.PROGRESSING
    return State.READY


def has_ready_pod(deployment: Mapping[str, Any] | None) -> bool:
    """Whether the Deployment reports a ready pod (``status.readyReplicas`` above 0)."""
    status = (deployment or {}).get("status") or {}
    return int(status.get("readyReplicas") or 0) > 0


@dataclasses.dataclass
class Read:
    """The Deployments one pass read, by path (None: not found), so that acting can use
    them instead of reading them again in the same pass (``acting.children.applied``).
    Acting drops it once the pass wrote or deleted a Deployment."""

    deployments: dict[str, kubeapi.Obj | None] = dataclasses.field(default_factory=dict)


async def read_deployment(
    api: client.ApiClient,
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    read: Read | None = None,
) -> kubeapi.Obj | None:
    """The Deployment, or None; kept in ``read`` when given."""
    name = metadata.name(job, where, component)
    resource_path = kubeapi.path("apps/v1", "deployments", job.namespace, name)
    found = await kubeapi.get(api, resource_path)
    if read is not None:
        read.deployments[resource_path] = found
    return found


async def deployment(
    api: client.ApiClient,
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    read: Read | None = None,
) -> State:
    return deployment_state(await read_deployment(api, job, where, component, read))


def latest_checkpoint(data: Mapping[str, str], job_id: str) -> observed.HaCheckpoint | None:
    """The newest retained checkpoint of ``job_id`` in the HA ConfigMap's data."""
    raw = data.get(f"checkpoints.{job_id}")
    if raw is None:
        return None
    try:
        retained = json.loads(raw).get("retained") or []
        pointers = [(int(p["checkpoint_id"]), str(p["path"])) for p in retained]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    if not pointers:
        return None
    checkpoint_id, path = max(pointers)
    return observed.HaCheckpoint(checkpoint_id, path)


async def ha_checkpoint(
    api: client.ApiClient, job: target.StreamJob, where: target.DeploymentTarget, job_id: str
) -> observed.HaCheckpoint | None:
    name = ha.configmap_name(metadata.cluster_id(job, where))
    found = await kubeapi.get(api, kubeapi.path("v1", "configmaps", job.namespace, name))
    if found is None:
        return None
    return latest_checkpoint(found.get("data") or {}, job_id)
