"""High availability: when it is on, the runtime's HA flags, and the objects the runtime owns.

With HA the JobManagers elect a leader on the Lease ``streamjob-<cluster id>-leader``
and keep their metadata in the ConfigMap ``streamjob-<cluster id>-ha`` (names as in
``streamjob_runtime.ha.lease``; a test keeps them equal). The runtime creates both; they
are not children of the StreamJob (no owner reference) because whether HA metadata
outlives a deletion is a policy of acting, not of the builders.
"""

from __future__ import annotations

from streamjob_operator.api import durations, models

# Expanded by the kubelet from the container's environment (downward API).
POD_NAME = "$(POD_NAME)"
POD_NAMESPACE = "$(POD_NAMESPACE)"
POD_IP = "$(POD_IP)"


def enabled(spec: models.StreamJobSpec) -> bool:
    """HA is on when asked for, or when several JobManagers run (they need an election)."""
    return spec.highAvailability.enabled or spec.jobManager.replicas > 1


def lease_name(cluster_id: str) -> str:
    return f"streamjob-{cluster_id}-leader"


def configmap_name(cluster_id: str) -> str:
    return f"streamjob-{cluster_id}-ha"


def arguments(spec: models.StreamJobSpec, cluster_id: str, *, jobmanager: bool) -> list[str]:
    """``--ha kubernetes ...`` for a JobManager or TaskManager; empty when HA is off.

    TaskManagers get the timings too: they poll the HA metadata for the leader's address
    every quarter of the retry period. Only JobManagers get ``--pod-name`` (the leader
    labels its own pod).
    """
    if not enabled(spec):
        return []
    ha = spec.highAvailability
    args = [
        "--ha", "kubernetes",
        "--ha-cluster-id", cluster_id,
        "--ha-namespace", POD_NAMESPACE,
        "--ha-lease-duration", str(durations.to_ms(ha.leaseDuration)),
        "--ha-renew-deadline", str(durations.to_ms(ha.renewDeadline)),
        "--ha-retry-period", str(durations.to_ms(ha.retryPeriod)),
    ]  # fmt: skip
    if jobmanager:
        args += ["--pod-name", POD_NAME]
    return args
