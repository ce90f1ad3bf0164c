"""The operator SIGKILLed at each step of a savepoint upgrade, then started again: the upgrade
completes and no state is lost (issue 5).

Everything is real but the cluster: the operator runs as ``python -m streamjob_operator``
against the Kubernetes emulator, the test kubelet (tests.kube.pods) runs the JobManager and
TaskManager pods as local processes, and the operator reaches the JobManager through the
emulator's Service proxy (``--jobmanager-url-template``, as through ``kubectl proxy``).

The kill comes from the emulator, at the request that marks the step: once the request
took effect and before the operator reads the answer (``KubeEmulator.on_request``), so
the operator dies at exactly that point, every run. A second operator process then takes
the Lease (after its duration: the first never released it) and must finish the
upgrade: STABLE at the new parallelism, the new job restored from the one upgrade
savepoint, one stop-with-savepoint and one submission of the new job in all, and the
job's output exact.

The old job runs until it is stopped, and the upgraded one ends right after its restore
(issue 10): a bounded old job raced the upgrade on a loaded machine (the second
operator took ~15 s to start, and the job ended first), and an upgraded job that ends
before a pass sees it running must still count as STABLE (``planning.stability``).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamjob_operator.api import crd
from streamjob_operator.planning import changes
from tests.integration.test_exactly_once_recovery import args, assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import test_handlers, test_observing
from tests.operator.test_handlers import GROUP_VERSION, status_of
from tests.operator.test_leadership import OperatorProcess
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
kubeconfig = fixtures.kubeconfig
pod_runner = fixtures.pod_runner

JOBS = Path(__file__).parent.parent / "jobs"
# The old job is unbounded (1,000 events/s, at most EVENTS in 400 s): it runs until the
# upgrade stops it, however long a busy machine takes to start the second operator. A
# bounded old job raced the upgrade (issue 10): on a loaded machine it ran out of events
# before the second operator could stop it, and the upgrade was blocked on a job that was
# no longer running. The upgraded job reads up to EVENTS at once, so that it ends soon.
EVENTS = 400_000
RATE = 1_000
NAME = "sum"
JOBMANAGER = f"{NAME}-jobmanager"
TERMINAL = {"FINISHED", "FAILED", "CANCELED"}


def spec(tmp_path: Path) -> dict[str, Any]:
    return {
        "image": "streamjob:test",
        "job": {
            "entrypoint": str(JOBS / "keyed_sum.py"),
            "args": args(tmp_path / "out", events=-1, rate=RATE),
            "parallelism": 2,
        },
        "taskManager": {"replicas": 1, "slots": 2},
        "checkpointing": {"storage": str(tmp_path / "checkpoints"), "interval": "200ms"},
        "savepoints": {"directory": str(tmp_path / "savepoints")},
        "stability": {"checkpoints": 2, "window": "1s", "timeout": "2m"},
    }


def finite_args(tmp_path: Path) -> list[str]:
    """The upgraded job's arguments: the same job, ending at EVENTS, unthrottled."""
    return args(tmp_path / "out", events=EVENTS, rate=1_000_000)


def operator_flags(kube: KubeEmulator) -> list[str]:
    proxy = f"{kube.url}/api/v1/namespaces/{{namespace}}/services/{{service}}:{{port}}/proxy"
    return [
        "--jobmanager-url-template", proxy,
        "--progress-check-interval", "300ms",
        "--reconcile-interval", "2s",
    ]  # fmt: skip


def _upgrade_stop_recorded(body: Any) -> bool:
    pending = (body or {}).get("status", {}).get("pendingSavepoint") or {}
    return bool(pending.get("triggerType") == "upgrade")


def _named(name: str) -> Callable[[Any], bool]:
    return lambda body: bool((body or {}).get("metadata", {}).get("name") == name)


def _submission(body: Any) -> bool:
    return isinstance(body, dict) and "entrypoint" in body


# kill point -> (method, path fragment, body predicate) of the request that marks it
KILL_POINTS: dict[str, tuple[str, str, Callable[[Any], bool] | None]] = {
    # status records the stop (target spec, step, trigger id): the request is not sent yet
    "stop-recorded": ("PATCH", f"/streamjobs/{NAME}/status", _upgrade_stop_recorded),
    # the JobManager took the stop-with-savepoint; the operator never sees the answer
    "stop-sent": ("POST", "/stop", None),
    # the old JobManager Deployment is deleted (foreground: its pod is going)
    "jobmanager-deleted": ("DELETE", f"/deployments/{JOBMANAGER}", None),
    # the new JobManager Deployment is created
    "jobmanager-created": ("POST", f"/namespaces/{NAMESPACE}/deployments", _named(JOBMANAGER)),
    # the new JobManager took the submission; the operator never sees the job id
    "job-submitted": ("POST", f"/services/{JOBMANAGER}:8081/proxy/jobs", _submission),
}


def proxied(kube: KubeEmulator, method: str, suffix: str) -> list[str]:
    """Paths of the successful requests to the JobManager through the Service proxy."""
    return [
        r.path
        for r in kube.requests
        if r.method == method
        and f"/services/{JOBMANAGER}:8081/proxy/" in r.path
        and r.path.endswith(suffix)
        and r.status < 400
    ]


def restores(pod_runner: PodRunner) -> list[dict[str, Any]]:
    """The JobManagers' ``restoring_from_checkpoint`` events, in order."""
    found = []
    for line in pod_runner.logs().splitlines():
        if '"restoring_from_checkpoint"' in line:
            found.append(json.loads(line))
    return found


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_an_operator_killed_mid_upgrade_is_replaced_and_the_upgrade_completes_exactly(
    kube: KubeEmulator, kubeconfig: Path, pod_runner: PodRunner, tmp_path: Path, kill_point: str
) -> None:
    kube.apply_crd(crd.build())
    flags = operator_flags(kube)
    first = OperatorProcess(kubeconfig, "first", tmp_path, flags)
    second: OperatorProcess | None = None
    try:
        kube.create(test_observing.streamjob_body(NAME, spec(tmp_path)))
        kube.wait_for(
            lambda: status_of(kube, NAME).get("lifecycleState") == "STABLE",
            timeout=180,
            what="STABLE",
        )
        old_job = status_of(kube, NAME)["job"]["id"]

        # a hook that never fires: its predicate collects the trigger ids status records
        trigger_ids: set[str] = set()

        def recorded(body: Any) -> bool:
            pending = (body or {}).get("status", {}).get("pendingSavepoint") or {}
            if pending.get("triggerId"):
                trigger_ids.add(pending["triggerId"])
            return False

        kube.on_request(lambda: None, method="PATCH", path_contains="/status", when=recorded)
        method, path, when = KILL_POINTS[kill_point]
        kube.on_request(
            lambda: first.popen.send_signal(signal.SIGKILL),
            method=method,
            path_contains=path,
            when=when,
        )
        kube.patch(
            GROUP_VERSION,
            "streamjobs",
            NAME,
            {"spec": {"job": {"parallelism": 1, "args": finite_args(tmp_path)}}},
            namespace=NAMESPACE,
        )
        assert first.popen.wait(60) == -signal.SIGKILL, first.logs()

        second = OperatorProcess(kubeconfig, "second", tmp_path, flags)
        kube.wait_for(
            lambda: (
                status_of(kube, NAME).get("lifecycleState") == "STABLE"
                and status_of(kube, NAME)["job"]["id"] != old_job
            ),
            timeout=120,
            what="the upgrade to complete under the second operator",
        )
        status = status_of(kube, NAME)
        r = status["reconciliation"]
        assert r["lastStableSpec"] == r["lastReconciledSpec"]
        assert changes.decode(r["lastReconciledSpec"]).job.parallelism == 1
        assert r.get("step") is None
        new_job = status["job"]["id"]

        # One upgrade savepoint, taken by one stop, restored by the one new job.
        savepoint = status["lastSavepoint"]
        assert savepoint["trigger"] == "upgrade"
        assert r["restorePath"] == savepoint["location"]
        assert [p.name for p in (tmp_path / "savepoints").iterdir()] == [
            Path(savepoint["location"]).name
        ]
        # One trigger id, recorded before the stop: the second operator sent the stop
        # under it (stop-recorded) or found the one the first had sent (stop-sent).
        (trigger_id,) = trigger_ids
        base = f"/api/v1/namespaces/{NAMESPACE}/services/{JOBMANAGER}:8081/proxy/jobs/{old_job}"
        assert proxied(kube, "POST", "/stop") == [f"{base}/stop"]
        asked = {p for p in proxied(kube, "GET", "") if "/savepoints/" in p}
        assert asked == {f"{base}/savepoints/{trigger_id}"}
        assert len(proxied(kube, "POST", "/proxy/jobs")) == 2  # the first job and the new one
        (restored,) = [e for e in restores(pod_runner) if e["job_id"] == new_job]
        assert restored["path"] == savepoint["location"]
        assert restored["attempt"] == 1
        reasons = test_handlers.reasons(kube, NAME)
        assert "SavepointFailed" not in reasons
        assert reasons.count("SavepointCompleted") == 1

        kube.wait_for(
            lambda: status_of(kube, NAME).get("job", {}).get("state") in TERMINAL,
            timeout=90,
            what="the job to finish",
        )
        assert status_of(kube, NAME)["job"]["state"] == "FINISHED"
        assert_exact(tmp_path / "out", events=EVENTS)
        assert second.popen.poll() is None, second.logs()
        assert pod_runner.errors == []
    except BaseException:
        print(first.logs())
        if second is not None:
            print(second.logs())
        print(pod_runner.logs()[-6000:])
        raise
    finally:
        first.stop()
        if second is not None:
            second.stop()
