"""All of a StreamJob's children for one deployment target, in the order to apply them.

Identities first (ServiceAccounts, Roles, RoleBindings), so pods never start without
their permissions; then the options record and the Service; then the JobManager, whose
leader the TaskManagers, last, look for.
"""

from __future__ import annotations

from typing import Any

from streamjob_operator.desired import jobmanager, metadata, rbac, submission, target, taskmanager

_COMPONENTS = (metadata.Component.JOBMANAGER, metadata.Component.TASKMANAGER)


def children(job: target.StreamJob, where: target.DeploymentTarget) -> list[dict[str, Any]]:
    return [
        *(rbac.service_account(job, where, c) for c in _COMPONENTS),
        *(rbac.role(job, where, c) for c in _COMPONENTS),
        *(rbac.role_binding(job, where, c) for c in _COMPONENTS),
        submission.configmap(job, where),
        jobmanager.service(job, where),
        jobmanager.deployment(job, where),
        taskmanager.deployment(job, where),
    ]
