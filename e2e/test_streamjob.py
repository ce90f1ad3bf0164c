"""StreamJobs on a real cluster: the examples applied, upgraded, killed, suspended, deleted.

The keyed-count examples' output (examples/keyed_count.py) is exact at every moment, not
only at the end: for every key the committed counts are 1..n once each, and each count
comes from the event it must. So each step checks the output read from the volume
(through a pod that mounts it) is exact and has grown since the step before: nothing
lost, nothing repeated, no state dropped across the savepoint upgrade, the TaskManager
kill, the suspension, the JobManager failover and the last-state upgrade.
"""

from __future__ import annotations

from typing import Any

import pytest
from examples import keyed_count

from e2e import cluster
from e2e.conftest import committed_lines, example

pytestmark = pytest.mark.timeout(3600)  # includes building the image and the cluster

SETTLE = 360.0  # a deploy: pods scheduled, job submitted, stable (checkpoints + window)
PROGRESS = 240.0  # output moving again after a step
GONE = 300.0


def instance(name: str, component: str | None = None) -> str:
    selector = f"app.kubernetes.io/name=streamjob,app.kubernetes.io/instance={name}"
    return selector if component is None else f"{selector},app.kubernetes.io/component={component}"


def argument(job: dict[str, Any], key: str) -> str:
    args: list[str] = job["spec"]["job"]["args"]
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")]
    return value


def settled(kube: cluster.Kube, name: str, *, other_than: str | None = None) -> dict[str, Any]:
    """The status once the operator has acted on the latest spec and the job is STABLE
    (a job other than ``other_than``, after a redeploy)."""
    generation = kube.streamjob(name)["metadata"]["generation"]

    def probe() -> dict[str, Any] | None:
        status = kube.status(name)
        assert not status.get("error"), f"{name}: status error: {status['error']}"
        reconciliation = status.get("reconciliation", {})
        done = (
            reconciliation.get("observedGeneration", 0) >= generation
            and reconciliation.get("step") is None
            and status.get("lifecycleState") == "STABLE"
            and status.get("job", {}).get("id") not in (None, other_than)
        )
        return status if done else None

    return cluster.wait_for(probe, f"{name} STABLE at generation {generation}", SETTLE)


def exact_and_growing(kube: cluster.Kube, reader: str, job: dict[str, Any], *, beyond: int) -> int:
    """Wait until the committed output has more than ``beyond`` lines; every read of it on
    the way must be exact. Returns the line count."""
    out, keys = argument(job, "out"), int(argument(job, "keys"))

    def probe() -> int | None:
        lines = committed_lines(kube, reader, out)
        report = keyed_count.verify(lines, keys)
        assert report.exact, f"output of {out} not exact: {report.problems}"
        return report.lines if report.lines > beyond else None

    return cluster.wait_for(probe, f"output in {out} beyond {beyond} lines", PROGRESS)


def delete_and_check_gone(kube: cluster.Kube, name: str, *, ha: bool) -> None:
    kube.kubectl("delete", "streamjob", name, "--wait=true", f"--timeout={GONE:.0f}s")
    kinds = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,pods"

    def gone() -> bool:
        left = kube.names(kinds, instance(name))
        if ha:
            left += kube.kubectl(
                "get", "configmap", f"streamjob-{name}-ha", "--ignore-not-found", "-o", "name"
            ).split()
        return not left

    cluster.wait_for(gone, f"every child of {name} to be deleted", GONE)
    assert kube.kubectl("get", "streamjobs", "--ignore-not-found", "-o", "name").split() == []


def test_savepoint_upgrade_taskmanager_kill_suspend_resume_and_delete(
    kube: cluster.Kube, reader: str
) -> None:
    (job,) = example("streamjob-savepoint-upgrade.yaml")
    name = job["metadata"]["name"]
    kube.apply(job)
    status = settled(kube, name)
    first = status["job"]["id"]
    lines = exact_and_growing(kube, reader, job, beyond=0)

    # A TaskManager dies: the job restarts from its latest checkpoint, exactly.
    restarts = status["job"].get("restarts", 0)
    pod = kube.pods(instance(name, "taskmanager"))[0]["metadata"]["name"]
    kube.kubectl("delete", "pod", pod, "--grace-period=0", "--force")
    cluster.wait_for(
        lambda: (
            (s := kube.status(name)["job"]).get("restarts", 0) > restarts
            and s.get("state") == "RUNNING"
        ),
        f"{name} restarted after the TaskManager {pod} died",
        PROGRESS,
    )
    assert kube.status(name)["job"]["id"] == first
    lines = exact_and_growing(kube, reader, job, beyond=lines)

    # Rescale 2 -> 1 and change an argument: stop with a savepoint, redeploy, restore.
    args = [a for a in job["spec"]["job"]["args"] if not a.startswith("rate=")] + ["rate=300"]
    kube.patch_spec(name, {"job": {"parallelism": 1, "args": args}})
    status = settled(kube, name, other_than=first)
    upgraded = status["job"]["id"]
    savepoint = status["lastSavepoint"]
    assert savepoint["trigger"] == "upgrade"
    assert savepoint["location"].startswith(job["spec"]["savepoints"]["directory"] + "/")
    assert status["reconciliation"]["restorePath"] == savepoint["location"]
    lines = exact_and_growing(kube, reader, job, beyond=lines)

    # Suspend: a savepoint, then no pods; resume from that savepoint.
    kube.patch_spec(name, {"job": {"state": "suspended"}})
    generation = kube.streamjob(name)["metadata"]["generation"]
    cluster.wait_for(
        lambda: (
            (s := kube.status(name)).get("lifecycleState") == "SUSPENDED"
            and s["reconciliation"].get("observedGeneration", 0) >= generation
            and s["reconciliation"].get("step") is None
        ),
        f"{name} SUSPENDED",
        SETTLE,
    )
    cluster.wait_for(lambda: not kube.pods(instance(name)), f"{name}'s pods gone", GONE)
    suspended = kube.status(name)["lastSavepoint"]
    assert suspended["trigger"] == "suspend"
    lines = exact_and_growing(kube, reader, job, beyond=lines - 1)  # exact while suspended
    kube.patch_spec(name, {"job": {"state": "running"}})
    status = settled(kube, name, other_than=upgraded)
    assert status["reconciliation"]["restorePath"] == suspended["location"]
    exact_and_growing(kube, reader, job, beyond=lines)

    delete_and_check_gone(kube, name, ha=False)


def test_jobmanager_failover_and_last_state_upgrade_with_ha(
    kube: cluster.Kube, reader: str
) -> None:
    (job,) = example("streamjob-last-state-ha.yaml")
    name = job["metadata"]["name"]
    assert job["spec"]["jobManager"]["replicas"] == 2
    kube.apply(job)
    status = settled(kube, name)
    first = status["job"]["id"]
    lines = exact_and_growing(kube, reader, job, beyond=0)
    assert len(kube.pods(instance(name, "jobmanager"))) == 2

    # The leading JobManager dies: the standby takes the Lease and recovers the job.
    leader_selector = f"{instance(name, 'jobmanager')},streamjob.dev/jobmanager-leader=true"
    (leader,) = [p["metadata"]["name"] for p in kube.pods(leader_selector)]
    kube.kubectl("delete", "pod", leader, "--grace-period=0", "--force")
    cluster.wait_for(
        lambda: [p for p in kube.pods(leader_selector) if p["metadata"]["name"] != leader],
        f"a new leading JobManager after {leader}",
        PROGRESS,
    )
    at_failover = exact_and_growing(kube, reader, job, beyond=0)
    exact_and_growing(kube, reader, job, beyond=max(lines, at_failover))
    status = cluster.wait_for(
        lambda: s if (s := kube.status(name))["job"].get("state") == "RUNNING" else None,
        f"{name} RUNNING under the new leader",
        PROGRESS,
    )
    assert status["job"]["id"] == first  # recovered from the HA metadata, not resubmitted

    # last-state: redeploy and restore from the latest checkpoint, no savepoint.
    args = [a for a in job["spec"]["job"]["args"] if not a.startswith("rate=")] + ["rate=300"]
    kube.patch_spec(name, {"job": {"args": args}})
    lines = exact_and_growing(kube, reader, job, beyond=0)
    status = settled(kube, name, other_than=first)
    restored = status["reconciliation"]["restorePath"]
    assert restored.startswith(job["spec"]["checkpointing"]["storage"] + "/"), restored
    exact_and_growing(kube, reader, job, beyond=lines)

    delete_and_check_gone(kube, name, ha=True)


def test_stateless_example_runs_and_is_deleted(kube: cluster.Kube, reader: str) -> None:
    (job,) = example("streamjob-stateless.yaml")
    name = job["metadata"]["name"]
    out = job["spec"]["job"]["args"][0]
    kube.apply(job)
    settled(kube, name)
    cluster.wait_for(
        lambda: len(committed_lines(kube, reader, out)) > 0, f"output in {out}", PROGRESS
    )
    delete_and_check_gone(kube, name, ha=False)
