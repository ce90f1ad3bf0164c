"""All of a StreamJob's children for one deployment target, in the order to apply them.

Identities first (ServiceAccounts, Roles, RoleBindings), so pods never start without
their permissions; then the NetworkPolicies, so no pod is ever reachable unguarded;
then the options record and the Service; then the JobManager, whose leader the
TaskManagers, last, look for. The credentials' Secrets are per StreamJob, not per
target, and made apart (``acting.credentials``).
"""

from __future__ import annotations

from typing import Any

from streamjob_operator.desired import (
    jobmanager,
    metadata,
    network,
    rbac,
    submission,
    target,
    taskmanager,
)

_COMPONENTS = (metadata.Component.JOBMANAGER, metadata.Component.TASKMANAGER)


def children(
    job: target.StreamJob,
    where: target.DeploymentTarget,
    network_settings: network.Settings | None = None,
) -> list[dict[str, Any]]:
    """``network_settings`` default: NetworkPolicies on (so every policy is named)."""
    return [
        *(rbac.service_account(job, where, c) for c in _COMPONENTS),
        *(rbac.role(job, where, c) for c in _COMPONENTS),
        *(rbac.role_binding(job, where, c) for c in _COMPONENTS),
        *network.network_policies(job, where, network_settings or network.Settings()),
        submission.configmap(job, where),
        jobmanager.service(job, where),
        jobmanager.deployment(job, where),
        taskmanager.deployment(job, where),
    ]
