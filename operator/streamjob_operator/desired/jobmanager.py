"""The JobManager: its Deployment and the Service in front of its REST and RPC ports.

The JobManager advertises the pod IP (``--host``), which is what HA metadata must name
for TaskManagers and clients to reach the leader, and listens on every interface of its
pod (``--bind-host 0.0.0.0``), so that ``streamjob list -m localhost:8081`` inside the
pod and ``kubectl port-forward`` (which connects to localhost) reach it too.

With HA the leader and the standbys are all Ready (``/readyz`` answers 200 for a standby
ready to take over, so the Deployment becomes available and its rollout completes); the
Service selects ``streamjob.dev/jobmanager-leader: "true"``, the label the leader puts on
its own pod (and takes off the previous leader's), so it reaches the leader only. A
standby takes a label a previous process of its pod left off before it reports ready.

REST is HTTPS with the job's certificate and needs the job's bearer token
(``desired.security``); the probes ask ``/healthz`` and ``/readyz`` on the plain-HTTP
metrics port (9249), which serves nothing else.
"""

from __future__ import annotations

import posixpath
from typing import Any

from streamjob_operator.desired import ha, metadata, podtemplate, security, target, workload

CONTAINER = "jobmanager"
REST_PORT = 8081
RPC_PORT = 6123
COMPONENT = metadata.Component.JOBMANAGER


def service_name(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    return metadata.name(job, where, COMPONENT)


def rest_url(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    """Where the operator reaches the JobManager's REST API (the leader's, with HA): HTTPS,
    verified with the job's CA (the certificate names the Service)."""
    return f"https://{service_name(job, where)}.{job.namespace}.svc:{REST_PORT}"


def web_url(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    """The JobManager's web UI, which it serves at the root of its REST API."""
    return rest_url(job, where) + "/"


def rpc_address(job: target.StreamJob, where: target.DeploymentTarget) -> str:
    """The Service's RPC address, as TaskManagers without HA are given it."""
    return f"{service_name(job, where)}.{job.namespace}.svc:{RPC_PORT}"


def arguments(job: target.StreamJob, where: target.DeploymentTarget) -> list[str]:
    """The flags of ``streamjob jobmanager``."""
    spec = job.spec
    args = [
        "--host", ha.POD_IP,
        "--bind-host", "0.0.0.0",
        "--rpc-port", str(RPC_PORT),
        "--rest-port", str(REST_PORT),
        "--checkpoint-dir", spec.checkpointing.storage,
    ]  # fmt: skip
    if spec.savepoints.directory is not None:
        args += ["--savepoint-dir", spec.savepoints.directory]
    if spec.job.initialSavepointPath is not None:
        # The runtime confines restore paths to its storage roots (by default the checkpoint
        # and savepoint directories): a job started from a savepoint elsewhere needs its
        # directory among them too.
        roots = [spec.checkpointing.storage, spec.savepoints.directory]
        roots.append(posixpath.dirname(spec.job.initialSavepointPath.rstrip("/")))
        args += ["--storage-roots", ":".join(r for r in roots if r)]
    args += security.arguments(jobmanager=True)
    return args + ha.arguments(spec, metadata.cluster_id(job, where), jobmanager=True)


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"}, **timing}


def container(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    spec = job.spec
    return {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.imagePullPolicy,
        "command": ["streamjob", "jobmanager"],
        "args": arguments(job, where),
        "env": podtemplate.environment(),
        "ports": [
            {"name": "rest", "containerPort": REST_PORT, "protocol": "TCP"},
            {"name": "rpc", "containerPort": RPC_PORT, "protocol": "TCP"},
            security.metrics_port(),
        ],
        "volumeMounts": security.volume_mounts(jobmanager=True),
        "readinessProbe": _probe("/readyz", periodSeconds=2, timeoutSeconds=2, failureThreshold=3),
        "livenessProbe": _probe(
            "/healthz", initialDelaySeconds=15, periodSeconds=10, timeoutSeconds=5
        ),
        "resources": podtemplate.resources(spec.jobManager.resources),
    }


def deployment(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    """``jobManager.replicas`` JobManagers (one leader and standbys with HA).

    The strategy is Recreate: without HA a rolling update would run two JobManagers,
    two leaders of one job, side by side; with HA it would mix versions in one election.
    """
    return workload.deployment(
        job,
        where,
        COMPONENT,
        container(job, where),
        job.spec.jobManager.podTemplate,
        job.spec.jobManager.replicas,
        security.volumes(job, jobmanager=True),
    )


def service(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    """REST (8081) and RPC (6123) of the JobManager; of the leader only, with HA."""
    selector = metadata.selector_labels(job, where, COMPONENT)
    if ha.enabled(job.spec):
        selector[metadata.LEADER_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata.object_meta(job, where, COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "publishNotReadyAddresses": False,
            "ports": [
                {"name": "rest", "port": REST_PORT, "targetPort": "rest", "protocol": "TCP"},
                {"name": "rpc", "port": RPC_PORT, "targetPort": "rpc", "protocol": "TCP"},
            ],
        },
    }
