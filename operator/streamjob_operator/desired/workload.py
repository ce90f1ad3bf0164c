"""The Deployment shape the JobManager and TaskManager builders share."""

from __future__ import annotations

from typing import Any

from streamjob_operator.desired import ha, metadata, podtemplate, target


def deployment(
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    container: dict[str, Any],
    user_template: dict[str, Any] | None,
    replicas: int,
    volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Recreate Deployment of ``component``'s pods, with the secure pod template merged."""
    template = podtemplate.build(
        job,
        where,
        component,
        container,
        user_template,
        service_account=metadata.name(job, where, component),
        kubernetes_api=ha.enabled(job.spec),
        volumes=volumes or [],
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata.object_meta(job, where, component),
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": metadata.selector_labels(job, where, component)},
            "template": template,
        },
    }
