"""What the operator's tests with real pods share: kopf runs the handlers against the
Kubernetes emulator, the test kubelet (tests.kube.pods) runs the Deployments' pods as
local JobManager and TaskManager processes, and the operator reaches the JobManager
through the kubelet's Service resolution. The StreamJob runs tests/jobs/keyed_sum.py,
whose exactly-once output is known in advance (``assert_exact``).

    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", live.spec(tmp_path)))
        live.wait_status(kube, "sum", lambda s: s.get("lifecycleState") == "STABLE", "STABLE")
    assert_exact(tmp_path / "out", events=live.EVENTS)

The job runs at a fixed rate, so that the tests change its spec while it runs; the
settings below keep each test to seconds (checkpoints every 200 ms, a 1 s stability
window, passes every 300 ms while something is under way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from streamjob_operator import handlers
from streamjob_operator.planning import configuration
from streamjob_runtime.api import models as rest
from tests.integration.test_exactly_once_recovery import args
from tests.kube import KubeEmulator
from tests.kube.pods import PodRunner
from tests.operator import test_handlers
from tests.operator.test_handlers import GROUP_VERSION, status_of
from tests.operator.test_observing import NAMESPACE

JOBS = Path(__file__).parent.parent / "jobs"
EVENTS = 40_000
RATE = 3_000  # events per second: the job runs ~13 s in all, whatever its downtime
FAST_RATE = 20_000
PLANNING = configuration.OperatorConfiguration(
    progress_check_interval=datetime.timedelta(milliseconds=300),
    reconcile_interval=datetime.timedelta(seconds=2),
)
TERMINAL = frozenset(s.value for s in rest.JobStatus if s.terminal)


def spec(
    tmp_path: Path,
    parallelism: int = 2,
    rate: int = RATE,
    events: int = EVENTS,
    **job_args: object,
) -> dict[str, Any]:
    """A StreamJob spec running keyed_sum into ``tmp_path/out`` (``job_args`` added to
    its arguments), with checkpoints and savepoints under ``tmp_path``. The rate does
    not change the output: a test that is done changing the job may raise it."""
    return {
        "image": "streamjob:test",
        "job": {
            "entrypoint": str(JOBS / "keyed_sum.py"),
            "args": args(tmp_path / "out", events=events, rate=rate, **job_args),
            "parallelism": parallelism,
        },
        "taskManager": {"replicas": 1, "slots": 2},
        "checkpointing": {"storage": str(tmp_path / "checkpoints"), "interval": "200ms"},
        "savepoints": {"directory": str(tmp_path / "savepoints")},
        "stability": {"checkpoints": 2, "window": "1s", "timeout": "2m"},
    }


@contextlib.contextmanager
def operator(
    kube: KubeEmulator, pod_runner: PodRunner, savepoint_mounts: tuple[Path, ...] = ()
) -> Iterator[handlers.Reconciler]:
    """kopf running the handlers until the block ends, reaching the JobManagers the
    kubelet runs (and deleting savepoints under ``savepoint_mounts``). On a failure the
    pods' logs and the Events are printed; the kubelet must have seen no error of its own."""
    reconciler = test_handlers.reconciler_for(kube, planning=PLANNING, resolve=pod_runner.resolve)
    acting = dataclasses.replace(reconciler.options.acting, savepoint_mounts=savepoint_mounts)
    reconciler.options = dataclasses.replace(reconciler.options, acting=acting)
    try:
        with test_handlers.operator(kube, reconciler):
            yield reconciler
        assert pod_runner.errors == []
    except BaseException:
        print(pod_runner.logs()[-8000:])
        for event in kube.list("v1", "events", NAMESPACE):
            print("event:", event.get("reason"), event.get("message"))
        for streamjob in kube.list(GROUP_VERSION, "streamjobs", NAMESPACE):
            print("status:", json.dumps(streamjob.get("status"), indent=1))
        raise


def patch(kube: KubeEmulator, name: str, spec: dict[str, Any]) -> None:
    """A JSON merge patch of the StreamJob's spec, as ``kubectl patch --type merge``."""
    kube.patch(GROUP_VERSION, "streamjobs", name, {"spec": spec}, namespace=NAMESPACE)


def wait_status(
    kube: KubeEmulator,
    name: str,
    condition: Callable[[dict[str, Any]], object],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    """The StreamJob's status once ``condition`` holds for it."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        status = status_of(kube, name)
        if condition(status):
            found.append(status)
            return True
        return False

    kube.wait_for(check, timeout=timeout, what=what)
    return found[-1]


def job_id(status: dict[str, Any]) -> str | None:
    found: str | None = status.get("job", {}).get("id")
    return found


def wait_stable(kube: KubeEmulator, name: str) -> dict[str, Any]:
    """Status once the deployment is STABLE, its job running."""
    return wait_status(
        kube,
        name,
        lambda s: s.get("lifecycleState") == "STABLE" and s["job"].get("state") == "RUNNING",
        f"{name} STABLE",
        timeout=90,
    )


def wait_redeployed(kube: KubeEmulator, name: str, old_job: str, what: str) -> dict[str, Any]:
    """Status once a job other than ``old_job`` was submitted and no step is under way."""
    return wait_status(
        kube,
        name,
        lambda s: (
            job_id(s) not in (None, old_job) and s.get("reconciliation", {}).get("step") is None
        ),
        what,
        timeout=90,
    )


def wait_finished(kube: KubeEmulator, name: str) -> dict[str, Any]:
    """Status once the job ended; it must have FINISHED (read all its input)."""
    status = wait_status(
        kube,
        name,
        lambda s: s.get("job", {}).get("state") in TERMINAL,
        "the job to finish",
        timeout=90,
    )
    assert status["job"]["state"] == "FINISHED", status
    return status
