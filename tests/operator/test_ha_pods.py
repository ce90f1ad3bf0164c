"""JobManager high availability with real JobManagers and TaskManagers (tests.operator.live):
a leader and a standby deploy, become STABLE, and the standby takes over the job when the
leader is killed, exactly."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from streamjob_operator.desired import metadata
from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures, pods
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
pod_runner = fixtures.pod_runner

HA = {"enabled": True, "leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "200ms"}
JOBMANAGER = "sum-jobmanager"


def leaders(kube: KubeEmulator) -> list[str]:
    """The pods that carry the leader label (the Service selects these)."""
    found = kube.list("v1", "pods", NAMESPACE, f"{metadata.LEADER_LABEL}=true")
    return sorted(p["metadata"]["name"] for p in found)


def ready_replicas(kube: KubeEmulator) -> int:
    deployment: dict[str, Any] = kube.get("apps/v1", "deployments", JOBMANAGER, NAMESPACE) or {}
    return int(deployment.get("status", {}).get("readyReplicas") or 0)


def role(pod_runner: PodRunner, pod: str) -> str:
    """What the pod's /readyz says it is (served on the plain metrics port, as the
    readiness probe reads it; the REST port speaks HTTPS with a token)."""
    [process] = [p for p in pod_runner.processes(JOBMANAGER, NAMESPACE) if p.name == pod]
    port = process.ports[pods.METRICS_PORT]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        found: str = json.load(resp)["role"]
        return found


def test_a_leader_and_a_standby_deploy_become_stable_and_the_standby_takes_over_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    spec = live.spec(tmp_path)
    spec["highAvailability"] = HA
    spec["jobManager"] = {"replicas": 2}
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", spec))
        # The standby is Ready too (its /readyz says so): the Deployment is available,
        # and the Service reaches the leader by its label.
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        assert ready_replicas(kube) == 2
        [leader] = leaders(kube)
        [standby] = [
            p.name for p in pod_runner.processes(JOBMANAGER, NAMESPACE) if p.name != leader
        ]
        assert (role(pod_runner, leader), role(pod_runner, standby)) == ("leader", "standby")
        ports = {p.name: p.ports[8081] for p in pod_runner.processes(JOBMANAGER, NAMESPACE)}
        assert pod_runner.endpoints(JOBMANAGER, NAMESPACE) == [ports[leader]]

        pod_runner.kill(leader)
        kube.wait_for(lambda: leaders(kube) == [standby], timeout=60, what="the standby to lead")
        # The killed pod's process restarts as a standby, Ready and not selected.
        kube.wait_for(
            lambda: ready_replicas(kube) == 2, timeout=60, what="the old leader to be a standby"
        )
        assert role(pod_runner, leader) == "standby"
        assert leaders(kube) == [standby]

        status = live.wait_finished(kube, "sum")
        assert status["job"]["id"] == first  # recovered by the new leader, not resubmitted
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons.count("Deployed") == 1
        assert "StabilityTimeout" not in reasons
    assert_exact(tmp_path / "out", events=live.EVENTS)
