"""The operator end to end with real JobManagers and TaskManagers: kopf runs the handlers
against the Kubernetes emulator, the test kubelet (tests.kube.pods) runs the Deployments'
pods as local processes, and the operator reaches the JobManager through the kubelet's
Service resolution. A StreamJob is deployed, becomes STABLE, is rescaled through a
stop-with-savepoint while its job runs, and its output is exact."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from streamjob_operator.planning import configuration
from streamjob_runtime.api import models as rest
from tests.integration.test_exactly_once_recovery import args, assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import test_handlers, test_observing
from tests.operator.test_handlers import GROUP_VERSION, status_of
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
pod_runner = fixtures.pod_runner

JOBS = Path(__file__).parent.parent / "jobs"
EVENTS = 40_000
PLANNING = configuration.OperatorConfiguration(
    progress_check_interval=datetime.timedelta(milliseconds=300),
    reconcile_interval=datetime.timedelta(seconds=2),
)


def spec(tmp_path: Path, parallelism: int) -> dict[str, Any]:
    return {
        "image": "streamjob:test",
        "job": {
            "entrypoint": str(JOBS / "keyed_sum.py"),
            "args": args(tmp_path / "out", events=EVENTS, rate=3_000),
            "parallelism": parallelism,
        },
        "taskManager": {"replicas": 1, "slots": 2},
        "checkpointing": {"storage": str(tmp_path / "checkpoints"), "interval": "200ms"},
        "savepoints": {"directory": str(tmp_path / "savepoints")},
        "stability": {"checkpoints": 2, "window": "1s", "timeout": "2m"},
    }


def test_a_streamjob_runs_becomes_stable_and_is_rescaled_through_a_savepoint_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    reconciler = test_handlers.reconciler_for(kube, planning=PLANNING, resolve=pod_runner.resolve)
    try:
        with test_handlers.operator(kube, reconciler):
            kube.create(test_observing.streamjob_body("sum", spec(tmp_path, 2)))
            kube.wait_for(
                lambda: status_of(kube, "sum").get("lifecycleState") == "STABLE",
                timeout=90,
                what="STABLE",
            )
            first = status_of(kube, "sum")["job"]["id"]
            assert status_of(kube, "sum")["job"]["state"] == "RUNNING"

            kube.patch(
                GROUP_VERSION,
                "streamjobs",
                "sum",
                {"spec": {"job": {"parallelism": 1}}},
                namespace=NAMESPACE,
            )
            kube.wait_for(
                lambda: (
                    status_of(kube, "sum").get("job", {}).get("id") not in (None, first)
                    and status_of(kube, "sum").get("reconciliation", {}).get("step") is None
                ),
                timeout=90,
                what="the rescaled job",
            )
            status = status_of(kube, "sum")
            savepoint = status["lastSavepoint"]
            assert savepoint["trigger"] == "upgrade"
            assert status["reconciliation"]["restorePath"] == savepoint["location"]
            assert Path(savepoint["location"]).is_relative_to(tmp_path / "savepoints")
            kube.wait_for(
                lambda: (
                    status_of(kube, "sum").get("job", {}).get("state")
                    in {s.value for s in rest.JobStatus if s.terminal}
                ),
                timeout=90,
                what="the job to finish",
            )
            assert status_of(kube, "sum")["job"]["state"] == "FINISHED"
            reasons = test_handlers.reasons(kube, "sum")
            assert reasons[:2] == ["Deploying", "Deployed"]
            assert {"Stable", "Upgrading", "SavepointCompleted"} <= set(reasons)
        assert_exact(tmp_path / "out", events=EVENTS)
        assert pod_runner.errors == []
    except BaseException:
        print(pod_runner.logs()[-6000:])
        raise
