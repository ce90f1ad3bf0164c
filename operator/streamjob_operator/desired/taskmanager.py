"""The TaskManagers: a Deployment of ``taskManager.replicas`` pods with ``slots`` each.

Without HA a TaskManager finds the JobManager through its Service
(``<service>.<namespace>.svc:6123``); with HA it reads the leader's address from the HA
metadata and follows every change of leader. It binds and advertises its data port on
the pod IP (other TaskManagers connect there); the port is fixed (6121) so that network
policies can name it.

No probes: a hung TaskManager is found by the JobManager's heartbeats, which fail its
tasks over to the others. It serves ``/metrics`` on the plain-HTTP metrics port (9249)
and mounts the job's certificate (``desired.security``): every connection it makes or
takes is mutual TLS with the job's CA.
"""

from __future__ import annotations

from typing import Any

from streamjob_operator.desired import (
    ha,
    jobmanager,
    metadata,
    podtemplate,
    security,
    target,
    workload,
)

CONTAINER = "taskmanager"
DATA_PORT = 6121
COMPONENT = metadata.Component.TASKMANAGER


def arguments(job: target.StreamJob, where: target.DeploymentTarget) -> list[str]:
    """The flags of ``streamjob taskmanager``."""
    spec = job.spec
    args = [
        "--slots", str(spec.taskManager.slots),
        "--host", ha.POD_IP,
        "--data-port", str(DATA_PORT),
        *security.arguments(jobmanager=False),
    ]  # fmt: skip
    if ha.enabled(spec):
        return args + ha.arguments(spec, metadata.cluster_id(job, where), jobmanager=False)
    return [*args, "--jobmanager", jobmanager.rpc_address(job, where)]


def container(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    spec = job.spec
    return {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": ["streamjob", "taskmanager"],
        "args": arguments(job, where),
        "env": podtemplate.environment(),
        "ports": [
            {"name": "data", "containerPort": DATA_PORT, "protocol": "TCP"},
            security.metrics_port(),
        ],
        "volumeMounts": security.volume_mounts(jobmanager=False),
        "resources": podtemplate.resources(spec.taskManager.resources),
    }


def deployment(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    """The TaskManagers, replaced all at once (Recreate): one job never mixes versions."""
    return workload.deployment(
        job,
        where,
        COMPONENT,
        container(job, where),
        job.spec.taskManager.podTemplate,
        job.spec.taskManager.replicas,
        security.volumes(job, jobmanager=False),
    )
