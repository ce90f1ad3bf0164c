"""ServiceAccounts, Roles and RoleBindings: least privilege, in the StreamJob's namespace.

Each component has its own ServiceAccount, Role and RoleBinding, named like its
Deployment. With HA their rules are what the runtime uses (README, "Kubernetes
permissions"), narrowed to the colour's own Lease and HA ConfigMap by
``resourceNames`` wherever Kubernetes can check names (it cannot for ``create``, nor
for pods, whose names are generated):

- JobManager: ``leases`` get, update (its Lease) and create; ``configmaps`` get,
  update (its HA ConfigMap) and create; ``pods`` list, patch (the leader label);
- TaskManager: ``leases`` get and ``configmaps`` get, of its colour's.

Without HA nothing talks to the API server: the Roles have no rules and the pods mount
no token. The objects exist either way, so the set of children never changes shape.
"""

from __future__ import annotations

from typing import Any

from streamjob_operator.desired import ha, metadata, target

RBAC_API = "rbac.authorization.k8s.io"


def rules(
    job: target.StreamJob, where: target.DeploymentTarget, component: metadata.Component
) -> list[dict[str, Any]]:
    if not ha.enabled(job.spec):
        return []
    cluster_id = metadata.cluster_id(job, where)
    lease = [ha.lease_name(cluster_id)]
    configmap = [ha.configmap_name(cluster_id)]
    if component is metadata.Component.TASKMANAGER:
        return [
            _rule("coordination.k8s.io", "leases", ["get"], lease),
            _rule("", "configmaps", ["get"], configmap),
        ]
    return [
        _rule("coordination.k8s.io", "leases", ["get", "update"], lease),
        _rule("coordination.k8s.io", "leases", ["create"]),
        _rule("", "configmaps", ["get", "update"], configmap),
        _rule("", "configmaps", ["create"]),
        _rule("", "pods", ["list", "patch"]),
    ]


def _rule(
    group: str, resource: str, verbs: list[str], names: list[str] | None = None
) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": [group], "resources": [resource], "verbs": verbs}
    if names is not None:
        rule["resourceNames"] = names
    return rule


def service_account(
    job: target.StreamJob, where: target.DeploymentTarget, component: metadata.Component
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata.object_meta(job, where, component),
        "automountServiceAccountToken": ha.enabled(job.spec),
    }


def role(
    job: target.StreamJob, where: target.DeploymentTarget, component: metadata.Component
) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "Role",
        "metadata": metadata.object_meta(job, where, component),
        "rules": rules(job, where, component),
    }


def role_binding(
    job: target.StreamJob, where: target.DeploymentTarget, component: metadata.Component
) -> dict[str, Any]:
    name = metadata.name(job, where, component)
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "RoleBinding",
        "metadata": metadata.object_meta(job, where, component),
        "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.namespace}],
    }
