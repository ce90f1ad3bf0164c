"""The operator end to end: kopf runs the handlers against the Kubernetes emulator, and the
JobManager is the fake one (its address injected through the resolver) or absent.

Nothing runs pods here: :class:`DeploymentController` plays the Deployment controller
(every Deployment's replicas ready as soon as it is written), when a test wants that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from streamjob_operator import handlers
from streamjob_operator.acting import actor
from streamjob_operator.api import models
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.planning import configuration
from streamjob_runtime.api import models as rest
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_observing
from tests.operator.test_observing import NAMESPACE, FakeJobManager

kube = fixtures.kube
fake_jobmanager = test_observing.fake_jobmanager

GROUP_VERSION = f"{models.GROUP}/{models.VERSION}"
SPEC: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount", "parallelism": 2},
    "taskManager": {"replicas": 2},
    "savepoints": {"directory": "/savepoints"},
    "stability": {"checkpoints": 1, "window": "1s", "timeout": "5m"},
}
FAST = configuration.OperatorConfiguration(
    progress_check_interval=datetime.timedelta(milliseconds=300),
    reconcile_interval=datetime.timedelta(seconds=2),
)


class DeploymentController:
    """Marks every Deployment in the namespace ready once its generation is new to it; and
    when a JobManager Deployment goes, so do the jobs of ``jobmanager`` (no HA: a new
    JobManager starts empty)."""

    def __init__(self, kube: KubeEmulator, jobmanager: FakeJobManager | None = None) -> None:
        self.kube = kube
        self.jobmanager = jobmanager
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seen: set[str] = set()
        while not self._stop.wait(0.05):
            names = set()
            for dep in self.kube.list("apps/v1", "deployments", NAMESPACE):
                names.add(dep["metadata"]["name"])
                status = dep.get("status") or {}
                if status.get("observedGeneration") != dep["metadata"]["generation"]:
                    with contextlib.suppress(Exception):  # deleted meanwhile
                        test_observing.mark_ready(self.kube, dep["metadata"]["name"])
            gone = {n for n in seen - names if n.endswith("-jobmanager")}
            if gone and self.jobmanager is not None:
                self.jobmanager.jobs.clear()
                self.jobmanager.savepoints.clear()
            seen = names

    def __enter__(self) -> DeploymentController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def reconciler_for(
    kube: KubeEmulator,
    jm: FakeJobManager | None = None,
    planning: configuration.OperatorConfiguration = FAST,
    resolve: Callable[[str], str] | None = None,
) -> handlers.Reconciler:
    """A Reconciler for the emulator reaching ``jm`` (or through ``resolve``; else the
    Service's own address, which resolves nowhere here)."""

    async def api() -> client.ApiClient:
        return fixtures.api_client(kube)

    if resolve is None:
        resolve = jm.resolve if jm is not None else rest_observing.identity
    settings = actor.Settings(resolve=resolve)
    options = handlers.Options(
        timer_interval=0.2,
        retry_delay=0.5,
        conflict_delay=0.2,
        rest_timeout_s=2.0,
        planning=planning,
        acting=settings,
    )
    return handlers.Reconciler(api, options)


@contextlib.contextmanager
def operator(kube: KubeEmulator, reconciler: handlers.Reconciler) -> Iterator[None]:
    test_observing.install_crd(kube)
    with fixtures.kopf_operator(kube, handlers.build_registry(reconciler), namespaces=[NAMESPACE]):
        yield


def create(kube: KubeEmulator, name: str = "wordcount", spec: dict[str, Any] | None = None) -> None:
    kube.create(test_observing.streamjob_body(name, spec or SPEC))


def status_of(kube: KubeEmulator, name: str = "wordcount") -> dict[str, Any]:
    body = kube.get(GROUP_VERSION, models.PLURAL, name, NAMESPACE)
    return {} if body is None else body.get("status") or {}


def lifecycle(kube: KubeEmulator, name: str = "wordcount") -> str | None:
    state: str | None = status_of(kube, name).get("lifecycleState")
    return state


def wait_lifecycle(kube: KubeEmulator, state: str, name: str = "wordcount") -> None:
    kube.wait_for(lambda: lifecycle(kube, name) == state, timeout=30, what=f"{name} {state}")


def errors(reconciler: handlers.Reconciler, stage: str) -> float:
    value = reconciler.metrics.registry.get_sample_value(
        "streamjob_operator_reconcile_errors_total", {"stage": stage}
    )
    return value or 0.0


def reasons(kube: KubeEmulator, name: str = "wordcount") -> list[str]:
    return [e["reason"] for e in kube.events_for(name, NAMESPACE, kind="StreamJob")]


def test_a_created_streamjob_gets_owned_children_and_is_deployed_then_stable(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    with operator(kube, reconciler_for(kube, fake_jobmanager)):
        create(kube)
        body = kube.wait_for(
            lambda: kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE),
            timeout=20,
            what="the TaskManager Deployment",
        )
        assert body is not None
        streamjob = kube.get(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
        assert streamjob is not None
        uid = streamjob["metadata"]["uid"]
        assert [o["uid"] for o in body["metadata"]["ownerReferences"]] == [uid]
        for kind, name in [
            ("deployments", "wordcount-jobmanager"),
            ("services", "wordcount-jobmanager"),
            ("configmaps", "wordcount-config"),
            ("serviceaccounts", "wordcount-taskmanager"),
        ]:
            version = "apps/v1" if kind == "deployments" else "v1"
            child = kube.get(version, kind, name, NAMESPACE)
            assert child is not None, f"{kind}/{name}"
            assert child["metadata"]["ownerReferences"][0]["uid"] == uid
        kube.wait_for(
            lambda: status_of(kube).get("reconciliation", {}).get("step") == "apply-children",
            timeout=10,
        )
        assert fake_jobmanager.submissions == []  # the JobManager is not ready yet

        with DeploymentController(kube):
            wait_lifecycle(kube, "DEPLOYED")
            (submission,) = fake_jobmanager.submissions
            assert submission.entrypoint == "examples.wordcount"
            assert submission.parallelism == 2
            (jid,) = fake_jobmanager.jobs
            assert status_of(kube)["job"]["id"] == jid
            fake_jobmanager.checkpoints[jid] = 1
            wait_lifecycle(kube, "STABLE")
        # an Event follows the status write of its pass
        kube.wait_for(lambda: "Stable" in reasons(kube), timeout=10, what="the Stable Event")
        assert reasons(kube)[:2] == ["Deploying", "Deployed"]
        stored = kube.get(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
        assert stored is not None
        assert handlers.FINALIZER in stored["metadata"]["finalizers"]


def test_a_conflicting_status_write_is_retried_quietly_and_its_events_are_posted_once(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A 409 is normal on a busy object: no ERROR log, no kopf Warning Event, and the
    Deploying Event of the pass that conflicted is not posted twice."""
    reconciler = reconciler_for(kube, fake_jobmanager)
    kube.inject_error(
        409,
        method="PATCH",
        path_contains="/streamjobs/wordcount/status",
        times=2,
        reason="Conflict",
        message="the object has been modified; please apply your changes to the latest version",
    )
    with operator(kube, reconciler), DeploymentController(kube, fake_jobmanager):
        create(kube)
        wait_lifecycle(kube, "DEPLOYED")
    assert reasons(kube).count("Deploying") == 1, reasons(kube)
    conflicts = [r for r in kube.requests if r.status == 409]
    assert len(conflicts) == 2  # both injected conflicts were met, and retried
    errors_logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors_logged == []
    kinds = {e["type"] for e in kube.events_for("wordcount", NAMESPACE, kind="StreamJob")}
    assert kinds == {"Normal"}


def test_with_no_jobmanager_reachable_the_operator_waits_and_keeps_reconciling(
    kube: KubeEmulator,
) -> None:
    reconciler = reconciler_for(kube)  # the Service's name resolves nowhere here
    with operator(kube, reconciler), DeploymentController(kube):
        create(kube)
        kube.wait_for(
            lambda: status_of(kube).get("reconciliation", {}).get("step") == "apply-children",
            timeout=20,
        )
        passes = reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= passes + 3, timeout=20, what="more passes")
        assert lifecycle(kube) == "CREATED"
        assert status_of(kube).get("error") is None
    assert errors(reconciler, "observe") == 0


def test_a_spec_change_upgrades_through_a_savepoint(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    controller = DeploymentController(kube, fake_jobmanager)
    with operator(kube, reconciler_for(kube, fake_jobmanager)), controller:
        create(kube)
        wait_lifecycle(kube, "DEPLOYED")
        (old,) = fake_jobmanager.jobs
        stop = f"POST /jobs/{old}/stop"
        kube.patch(
            GROUP_VERSION,
            models.PLURAL,
            "wordcount",
            {"spec": {"image": "streamjob:2"}},
            namespace=NAMESPACE,
        )
        kube.wait_for(lambda: len(fake_jobmanager.submissions) == 2, timeout=30, what="resubmit")
        wait_lifecycle(kube, "DEPLOYED")
        assert stop in fake_jobmanager.requests
        assert old not in fake_jobmanager.jobs  # the old JobManager went
        restored = fake_jobmanager.submissions[1].savepoint_path
        assert restored is not None
        assert status_of(kube)["lastSavepoint"]["location"] == restored
        assert status_of(kube)["lastSavepoint"]["trigger"] == "upgrade"
        tm = kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE)
        assert tm is not None
        assert tm["spec"]["template"]["spec"]["containers"][0]["image"] == "streamjob:2"
        assert "Upgrading" in reasons(kube)


def test_deleting_a_streamjob_takes_a_final_savepoint_then_lets_it_go(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    planning = configuration.OperatorConfiguration(
        savepoint_on_deletion=True,
        progress_check_interval=FAST.progress_check_interval,
        reconcile_interval=FAST.reconcile_interval,
    )
    with (
        operator(kube, reconciler_for(kube, fake_jobmanager, planning)),
        DeploymentController(kube),
    ):
        create(kube)
        wait_lifecycle(kube, "DEPLOYED")
        (jid,) = fake_jobmanager.jobs
        kube.delete(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
        kube.wait_for(
            lambda: kube.get(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE) is None,
            timeout=30,
            what="the StreamJob to go",
        )
        assert f"POST /jobs/{jid}/stop" in fake_jobmanager.requests
        assert fake_jobmanager.jobs[jid].state is rest.JobStatus.FINISHED
        assert "Deleting" in reasons(kube)
        assert "SavepointCompleted" in reasons(kube)
        # the children go with their owner
        assert kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE) is None


def test_a_final_savepoint_that_does_not_complete_in_time_is_given_up_and_the_job_cancelled(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    planning = configuration.OperatorConfiguration(
        savepoint_on_deletion=True,
        deletion_savepoint_timeout=datetime.timedelta(seconds=2),
        progress_check_interval=FAST.progress_check_interval,
        reconcile_interval=FAST.reconcile_interval,
    )
    with (
        operator(kube, reconciler_for(kube, fake_jobmanager, planning)),
        DeploymentController(kube),
    ):
        create(kube)
        wait_lifecycle(kube, "DEPLOYED")
        (jid,) = fake_jobmanager.jobs
        fake_jobmanager.hold_savepoints = True
        kube.delete(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
        kube.wait_for(
            lambda: kube.get(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE) is None,
            timeout=30,
            what="the StreamJob to go",
        )
        assert fake_jobmanager.jobs[jid].state is rest.JobStatus.CANCELED
        assert "FinalSavepointTimedOut" in reasons(kube)


def test_a_failing_streamjob_is_retried_and_does_not_hold_up_another(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    reconciler = reconciler_for(kube, fake_jobmanager)
    with operator(kube, reconciler), DeploymentController(kube):
        kube.inject_error(500, method="PATCH", path_contains="/streamjobs/broken/status", times=5)
        create(kube, "broken")
        create(kube, "healthy")
        wait_lifecycle(kube, "DEPLOYED", "healthy")
        wait_lifecycle(kube, "DEPLOYED", "broken")
    assert errors(reconciler, "act") >= 1
    exposition = reconciler.metrics.exposition().decode()
    assert 'streamjob_operator_reconciles_total{trigger="due"}' in exposition  # retried when due
    assert 'streamjob_operator_streamjobs{lifecycle="DEPLOYED"} 2.0' in exposition


def test_a_replica_that_does_not_lead_does_nothing(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    reconciler = reconciler_for(kube, fake_jobmanager)
    leading = threading.Event()
    reconciler.leading = leading.is_set
    with operator(kube, reconciler):
        create(kube)
        with pytest.raises(AssertionError, match="timed out"):
            kube.wait_for(
                lambda: kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE),
                timeout=1.5,
            )
        assert reconciler.passes == 0
        leading.set()
        kube.wait_for(
            lambda: kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE),
            timeout=20,
        )


def test_an_invalid_spec_is_reported_and_nothing_is_deployed(kube: KubeEmulator) -> None:
    reconciler = reconciler_for(kube)
    # The CRD admits it (its rules cannot compare durations); the operator's validation not.
    invalid = {**SPEC, "checkpointing": {"interval": "0s"}}
    with operator(kube, reconciler):
        create(kube, spec=invalid)
        kube.wait_for(lambda: status_of(kube).get("error"), timeout=20, what="an error")
        passes = reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= passes + 2, timeout=20, what="more passes")
    assert "nothing was deployed" in status_of(kube)["error"]
    assert "checkpointing.interval must be longer than zero" in status_of(kube)["error"]
    assert reasons(kube) == ["InvalidSpec"]  # once, not every pass
    assert kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE) is None


def test_manual_savepoints_are_kept_to_the_history_limit_and_the_expired_one_disposed_of(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager, tmp_path: Path
) -> None:
    fake_jobmanager.savepoint_root = tmp_path / "savepoints"
    reconciler = reconciler_for(kube, fake_jobmanager)
    reconciler.options = dataclasses.replace(
        reconciler.options,
        acting=dataclasses.replace(
            reconciler.options.acting, savepoint_mounts=(tmp_path / "savepoints",)
        ),
    )
    spec = {**SPEC, "savepoints": {"directory": "/savepoints", "historyMaxCount": 1}}

    def history() -> list[str]:
        return [e["location"] for e in status_of(kube).get("savepointHistory", [])]

    def trigger(nonce: int) -> None:
        kube.patch(
            GROUP_VERSION,
            models.PLURAL,
            "wordcount",
            {"spec": {"job": {"savepointTriggerNonce": nonce}}},
            namespace=NAMESPACE,
        )

    with operator(kube, reconciler), DeploymentController(kube, fake_jobmanager):
        create(kube, spec=spec)
        wait_lifecycle(kube, "DEPLOYED")
        trigger(1)
        kube.wait_for(lambda: len(history()) == 1, timeout=20, what="the first savepoint")
        (first,) = history()
        assert Path(first).is_dir()
        trigger(2)
        kube.wait_for(
            lambda: len(history()) == 1 and history()[0] != first,
            timeout=20,
            what="the second savepoint, alone in the history",
        )
        (second,) = history()
        assert status_of(kube)["lastSavepoint"]["location"] == second
        assert status_of(kube)["lastSavepoint"]["nonce"] == 2
        assert not Path(first).exists(), "the expired savepoint was not disposed of"
        assert Path(second).is_dir()
    assert "SavepointsDisposed" in reasons(kube)
    assert "SavepointNotDisposed" not in reasons(kube)


def test_an_expired_savepoint_the_operator_does_not_mount_is_reported_not_called_disposed(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager, tmp_path: Path
) -> None:
    """Its files remain: a SavepointNotDisposed Warning, and no SavepointsDisposed after it."""
    fake_jobmanager.savepoint_root = tmp_path / "savepoints"
    reconciler = reconciler_for(kube, fake_jobmanager)  # mounts no savepoint volume
    spec = {**SPEC, "savepoints": {"directory": "/savepoints", "historyMaxCount": 1}}

    def history() -> list[str]:
        return [e["location"] for e in status_of(kube).get("savepointHistory", [])]

    with operator(kube, reconciler), DeploymentController(kube, fake_jobmanager):
        create(kube, spec=spec)
        wait_lifecycle(kube, "DEPLOYED")
        for nonce in (1, 2):
            kube.patch(
                GROUP_VERSION,
                models.PLURAL,
                "wordcount",
                {"spec": {"job": {"savepointTriggerNonce": nonce}}},
                namespace=NAMESPACE,
            )

            def answered(n: int = nonce) -> bool:
                return bool((status_of(kube).get("lastSavepoint") or {}).get("nonce") == n)

            kube.wait_for(answered, timeout=20, what=f"savepoint {nonce}")
        kube.wait_for(lambda: len(history()) == 1, timeout=20, what="the first one dropped")
        passes = reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= passes + 2, timeout=20, what="more passes")
    assert reasons(kube).count("SavepointNotDisposed") == 1
    assert "SavepointsDisposed" not in reasons(kube)
