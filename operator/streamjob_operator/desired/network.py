"""NetworkPolicies: who may open a connection to a job's pods, port by port.

One policy per component and colour, named like its Deployment, selecting that
Deployment's pods; ingress only (what the pods connect to is not restricted). Once a
pod is selected by a policy, Kubernetes drops every connection no rule allows:

- JobManager RPC (6123) and TaskManager data (6121): only from the pods of the same
  cluster (the ``streamjob.dev/cluster`` label: the job's JobManagers and TaskManagers
  of that colour);
- JobManager REST (8081): only from pods in the operator's namespace and in the
  namespaces the operator is configured with (the chart's
  ``networkPolicy.restNamespaces``); none other, not even the job's own namespace;
- metrics (9249, ``/metrics``, ``/healthz``, ``/readyz``, plain HTTP): from the
  namespaces where Prometheus runs when they are given (the chart's
  ``networkPolicy.metricsNamespaces``), else from anywhere. The kubelet's probes come
  from the node, which NetworkPolicies never block.

Namespaces are matched by their ``kubernetes.io/metadata.name`` label, which Kubernetes
sets on every namespace. A NetworkPolicy needs a network plugin that enforces it
(Calico, Cilium...); without one it is stored and ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streamjob_operator.desired import jobmanager, metadata, security, target, taskmanager

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
API_VERSION = "networking.k8s.io/v1"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The operator's NetworkPolicy settings (Helm values), the same for every StreamJob.

    ``enabled``: whether the policies are made. ``operator_namespace``: where the
    operator runs (None: unknown, then only ``rest_namespaces`` reach REST).
    ``rest_namespaces``: further namespaces whose pods may call the REST API.
    ``metrics_namespaces``: where Prometheus scrapes from (empty: anywhere).
    """

    enabled: bool = True
    operator_namespace: str | None = None
    rest_namespaces: tuple[str, ...] = ()
    metrics_namespaces: tuple[str, ...] = ()

    @property
    def rest_from(self) -> list[str]:
        found = [self.operator_namespace] if self.operator_namespace else []
        return sorted({*found, *self.rest_namespaces})


def _port(number: int) -> dict[str, Any]:
    return {"port": number, "protocol": "TCP"}


def _namespaces(names: list[str]) -> dict[str, Any]:
    return {
        "namespaceSelector": {
            "matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "In", "values": names}]
        }
    }


def _own_pods(job: target.StreamJob, where: target.DeploymentTarget) -> dict[str, Any]:
    return {
        "podSelector": {
            "matchLabels": {
                metadata.NAME_LABEL: metadata.APP,
                metadata.CLUSTER_LABEL: metadata.cluster_id(job, where),
            }
        }
    }


def _metrics_rule(settings: Settings) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [_port(security.METRICS_PORT)]}
    if settings.metrics_namespaces:
        rule["from"] = [_namespaces(sorted(set(settings.metrics_namespaces)))]
    return rule


def rules(
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    settings: Settings,
) -> list[dict[str, Any]]:
    """The ingress rules of ``component``'s pods (see the module doc)."""
    own = _own_pods(job, where)
    if component is metadata.Component.TASKMANAGER:
        return [
            {"ports": [_port(taskmanager.DATA_PORT)], "from": [own]},
            _metrics_rule(settings),
        ]
    found = [{"ports": [_port(jobmanager.RPC_PORT)], "from": [own]}]
    if settings.rest_from:
        found.append(
            {"ports": [_port(jobmanager.REST_PORT)], "from": [_namespaces(settings.rest_from)]}
        )
    return [*found, _metrics_rule(settings)]


def network_policy(
    job: target.StreamJob,
    where: target.DeploymentTarget,
    component: metadata.Component,
    settings: Settings,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata.object_meta(job, where, component),
        "spec": {
            "podSelector": {"matchLabels": metadata.selector_labels(job, where, component)},
            "policyTypes": ["Ingress"],
            "ingress": rules(job, where, component, settings),
        },
    }


COMPONENTS = (metadata.Component.JOBMANAGER, metadata.Component.TASKMANAGER)


def network_policies(
    job: target.StreamJob, where: target.DeploymentTarget, settings: Settings
) -> list[dict[str, Any]]:
    """The policies of ``where``'s cluster; none when ``settings`` has them off."""
    if not settings.enabled:
        return []
    return [network_policy(job, where, c, settings) for c in COMPONENTS]
