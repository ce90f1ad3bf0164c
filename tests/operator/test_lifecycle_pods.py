"""The StreamJob lifecycle with real JobManagers and TaskManagers (tests.operator.live):
upgrades with a savepoint and with the last state, suspend and resume, manual and periodic
savepoints with retention, a failed upgrade rolled back, and an invalid spec that leaves
the running job alone. Every job runs keyed_sum while the operator acts, and its
committed output must be exact: nothing lost, nothing twice."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from streamjob_runtime.connectors import files
from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
pod_runner = fixtures.pod_runner

METADATA = "_metadata"
HA = {"enabled": True, "leaseDuration": "2s", "renewDeadline": "1500ms", "retryPeriod": "200ms"}


def create(kube: KubeEmulator, spec: dict[str, Any]) -> None:
    kube.create(test_observing.streamjob_body("sum", spec))


def pids(pod_runner: PodRunner) -> dict[str, int]:
    """The pods' current processes."""
    return {p.name: p.pid for p in pod_runner.pods() if p.pid is not None}


def history(status: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = status.get("savepointHistory", [])
    return entries


def committed_lines(out: Path) -> int:
    return len(files.read_committed_lines(str(out)))


def test_a_savepoint_upgrade_stops_with_a_savepoint_and_the_new_job_restores_it_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner):
        create(kube, live.spec(tmp_path))
        first = live.job_id(live.wait_stable(kube, "sum"))
        old_pods = pids(pod_runner)

        # a faster source: the output stays the same
        new = live.spec(tmp_path, rate=live.FAST_RATE)
        live.patch(kube, "sum", {"job": {"args": new["job"]["args"]}})
        assert first is not None
        status = live.wait_redeployed(kube, "sum", first, "the upgraded job")
        (savepoint,) = history(status)
        assert savepoint["trigger"] == "upgrade"
        assert status["lastSavepoint"]["location"] == savepoint["location"]
        assert status["reconciliation"]["restorePath"] == savepoint["location"]
        assert (Path(savepoint["location"]) / METADATA).is_file()
        assert f"rate={live.FAST_RATE}" in status["reconciliation"]["lastReconciledSpec"]
        # new processes for the new deployment
        assert not set(pids(pod_runner).values()) & set(old_pods.values())

        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons.count("Upgrading") == 1
        assert reasons.count("Deployed") == 2
    assert_exact(tmp_path / "out", events=live.EVENTS)


def test_a_last_state_upgrade_with_ha_restores_the_latest_checkpoint_without_a_savepoint(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    spec = live.spec(tmp_path)
    spec["job"]["upgradeMode"] = "last-state"
    spec["highAvailability"] = HA
    with live.operator(kube, pod_runner):
        create(kube, spec)
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        leases = kube.list("coordination.k8s.io/v1", "leases", NAMESPACE)
        assert [x["metadata"]["name"] for x in leases if x["metadata"]["name"].endswith("-leader")]

        new = live.spec(tmp_path, rate=live.FAST_RATE)
        live.patch(kube, "sum", {"job": {"args": new["job"]["args"]}})
        status = live.wait_redeployed(kube, "sum", first, "the upgraded job")
        restored = Path(status["reconciliation"]["restorePath"])
        # a checkpoint of the old job, not a savepoint
        assert restored.parent == tmp_path / "checkpoints" / first
        assert (restored / METADATA).is_file()
        # its latest: the one the cancelled job completed last
        completed = (tmp_path / "checkpoints" / first).glob(f"chk-*/{METADATA}")
        assert restored.name == max((p.parent.name for p in completed), key=lambda n: int(n[4:]))
        assert status.get("lastSavepoint") is None
        assert history(status) == []

        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert "Upgrading" in reasons
        assert "SavepointCompleted" not in reasons
    assert not (tmp_path / "savepoints").exists() or not list((tmp_path / "savepoints").iterdir())
    assert_exact(tmp_path / "out", events=live.EVENTS)


def test_a_suspended_streamjob_has_no_pods_and_resumes_from_its_savepoint_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner):
        create(kube, live.spec(tmp_path))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None

        live.patch(kube, "sum", {"job": {"state": "suspended"}})
        status = live.wait_status(
            kube, "sum", lambda s: s.get("lifecycleState") == "SUSPENDED", "SUSPENDED"
        )
        savepoint = status["lastSavepoint"]
        assert savepoint["trigger"] == "suspend"
        assert [e["location"] for e in history(status)] == [savepoint["location"]]
        assert status["reconciliation"]["restorePath"] == savepoint["location"]
        assert (Path(savepoint["location"]) / METADATA).is_file()
        for deployment in ("sum-jobmanager", "sum-taskmanager"):
            assert kube.get("apps/v1", "deployments", deployment, NAMESPACE) is None
        kube.wait_for(lambda: pod_runner.pods() == [], timeout=30, what="every pod to go")
        assert kube.list("v1", "pods", NAMESPACE) == []
        # suspended mid-way: some of the output, not all of it
        assert 0 < committed_lines(tmp_path / "out") < live.EVENTS

        faster = live.spec(tmp_path, rate=live.FAST_RATE)["job"]["args"]  # rides along
        live.patch(kube, "sum", {"job": {"state": "running", "args": faster}})
        status = live.wait_redeployed(kube, "sum", first, "the resumed job")
        assert status["reconciliation"]["restorePath"] == savepoint["location"]
        assert f"rate={live.FAST_RATE}" in status["reconciliation"]["lastReconciledSpec"]
        assert status["lifecycleState"] in {"DEPLOYED", "STABLE"}
        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert {"Suspending", "Suspended", "Upgrading"} <= set(reasons)
    assert_exact(tmp_path / "out", events=live.EVENTS)


def test_manual_and_periodic_savepoints_are_on_disk_in_the_history_and_expired_ones_deleted(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    spec = live.spec(tmp_path)
    spec["savepoints"] |= {"interval": "1s", "historyMaxCount": 2}
    with live.operator(kube, pod_runner, savepoint_mounts=(tmp_path / "savepoints",)):
        create(kube, spec)
        live.wait_status(
            kube, "sum", lambda s: s.get("job", {}).get("state") == "RUNNING", "a running job"
        )
        live.patch(kube, "sum", {"job": {"savepointTriggerNonce": 1}})
        status = live.wait_status(
            kube,
            "sum",
            lambda s: any(e["trigger"] == "manual" for e in history(s)),
            "the manual savepoint",
        )
        (manual,) = [e for e in history(status) if e["trigger"] == "manual"]
        assert manual["nonce"] == 1
        assert (Path(manual["location"]) / METADATA).is_file()

        def periodic_after_manual(s: dict[str, Any]) -> bool:
            entries = history(s)
            return (
                manual["location"] not in {e["location"] for e in entries}
                and len(entries) == 2
                and all(e["trigger"] == "periodic" for e in entries)
            )

        status = live.wait_status(
            kube, "sum", periodic_after_manual, "two periodic savepoints after the manual one"
        )
        assert not Path(manual["location"]).exists(), "the expired savepoint is still on disk"
        for entry in history(status):
            assert Path(entry["location"]).is_relative_to(tmp_path / "savepoints")
            assert (Path(entry["location"]) / METADATA).is_file()

        status = live.wait_finished(kube, "sum")
        status = live.wait_status(
            kube,
            "sum",
            lambda s: s.get("pendingSavepoint") is None and len(history(s)) <= 2,
            "the history settled",
        )
        on_disk = {str(p.parent) for p in (tmp_path / "savepoints").glob(f"*/{METADATA}")}
        assert on_disk == {e["location"] for e in history(status)}
        kube.wait_for(  # an Event follows the status write of its pass
            lambda: "SavepointsDisposed" in test_handlers.reasons(kube, "sum"),
            timeout=10,
            what="the SavepointsDisposed Event",
        )
        reasons = test_handlers.reasons(kube, "sum")
        assert "SavepointNotDisposed" not in reasons
    assert_exact(tmp_path / "out", events=live.EVENTS)


def test_an_upgrade_that_never_becomes_stable_is_rolled_back_to_the_upgrade_savepoint(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    events = 25_000  # ~8 s of running: the rolled back job runs at the stable spec's rate
    spec = live.spec(tmp_path, events=events)
    spec["rollback"] = {"enabled": True}
    with live.operator(kube, pod_runner):
        create(kube, spec)
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None

        # every event raises in the new version: its job restarts over and over
        failing = live.spec(tmp_path, events=events, fail_from=0)
        live.patch(
            kube,
            "sum",
            {"job": {"args": failing["job"]["args"]}, "stability": {"timeout": "8s"}},
        )
        # Rolled back once the new version is not stable 8 s after its deployment began
        # (usually restarting; on a slow machine perhaps not even running by then).
        status = live.wait_status(
            kube, "sum", lambda s: s.get("lifecycleState") == "ROLLED_BACK", "ROLLED_BACK"
        )
        (upgrade,) = history(status)  # the rollback took no savepoint
        assert upgrade["trigger"] == "upgrade"
        assert status["reconciliation"]["restorePath"] == upgrade["location"]
        assert live.job_id(status) not in (None, first)
        (rolling_back,) = kube.events_for("sum", NAMESPACE, reason="RollingBack")
        assert re.match(r"not (stable|running) 8s after its deployment", rolling_back["message"])
        assert rolling_back["message"].endswith(
            f"rolling back to the last stable spec from {upgrade['location']}"
        )
        status = live.wait_finished(kube, "sum")
        assert status["lifecycleState"] == "ROLLED_BACK"
        assert "fail_from=0" not in status["reconciliation"].get("lastStableSpec", "")
        assert "RolledBack" in test_handlers.reasons(kube, "sum")
    assert_exact(tmp_path / "out", events=events)


def test_an_invalid_spec_leaves_the_running_job_and_its_pods_alone(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner) as reconciler:
        create(kube, live.spec(tmp_path))
        first = live.job_id(live.wait_stable(kube, "sum"))
        pods = pids(pod_runner)
        generations = {
            name: (kube.get("apps/v1", "deployments", name, NAMESPACE) or {})["metadata"][
                "generation"
            ]
            for name in ("sum-jobmanager", "sum-taskmanager")
        }

        # valid to the API server (no CEL rule says so), not to the operator
        live.patch(kube, "sum", {"checkpointing": {"storage": "checkpoints"}})
        status = live.wait_status(kube, "sum", lambda s: s.get("error"), "the error")
        assert "the last valid spec keeps running" in status["error"]
        assert "checkpointing.storage must be an absolute path" in status["error"]
        passes = reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= passes + 3, timeout=30, what="more passes")
        status = test_handlers.status_of(kube, "sum")
        assert live.job_id(status) == first
        assert status["job"]["state"] == "RUNNING"
        assert status["lifecycleState"] == "STABLE"
        assert pids(pod_runner) == pods
        assert all(p.alive and p.restarts == 0 for p in pod_runner.pods())
        for name, generation in generations.items():
            deployment = kube.get("apps/v1", "deployments", name, NAMESPACE)
            assert deployment is not None
            assert deployment["metadata"]["generation"] == generation
        spec_valid = [c for c in status["conditions"] if c["type"] == "SpecValid"]
        assert [(c["status"], c["reason"]) for c in spec_valid] == [("False", "InvalidSpec")]
        assert test_handlers.reasons(kube, "sum").count("InvalidSpec") == 1

        live.patch(kube, "sum", {"checkpointing": {"storage": str(tmp_path / "checkpoints")}})
        live.wait_status(kube, "sum", lambda s: s.get("error") is None, "the error cleared")
        status = live.wait_finished(kube, "sum")
        assert live.job_id(status) == first
        assert "Upgrading" not in test_handlers.reasons(kube, "sum")
    assert_exact(tmp_path / "out", events=live.EVENTS)
