"""The operator end to end with real JobManagers and TaskManagers (tests.operator.live):
a StreamJob is deployed, becomes STABLE, is rescaled through a stop-with-savepoint while
its job runs, and its output is exact."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing

kube = fixtures.kube
pod_runner = fixtures.pod_runner


def test_a_streamjob_runs_becomes_stable_and_is_rescaled_through_a_savepoint_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", live.spec(tmp_path, 2)))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None

        live.patch(kube, "sum", {"job": {"parallelism": 1}})
        status = live.wait_redeployed(kube, "sum", first, "the rescaled job")
        savepoint = status["lastSavepoint"]
        assert savepoint["trigger"] == "upgrade"
        assert status["reconciliation"]["restorePath"] == savepoint["location"]
        assert Path(savepoint["location"]).is_relative_to(tmp_path / "savepoints")
        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons[:2] == ["Deploying", "Deployed"]
        assert {"Stable", "Upgrading", "SavepointCompleted"} <= set(reasons)
    assert_exact(tmp_path / "out", events=live.EVENTS)
