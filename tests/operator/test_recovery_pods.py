"""A job whose JobManager restarts without high availability, with real JobManagers and
TaskManagers (tests.operator.live): the operator recovers it from its newest completed
checkpoint, says so, and the output is exact."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
pod_runner = fixtures.pod_runner


def test_a_job_lost_with_its_jobmanager_is_recovered_from_its_newest_checkpoint_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", live.spec(tmp_path)))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        [jobmanager] = pod_runner.processes("sum-jobmanager", NAMESPACE)
        pod_runner.kill(jobmanager.name)  # restarted by the kubelet, knowing no job

        status = live.wait_status(
            kube,
            "sum",
            lambda s: (
                live.job_id(s) not in (None, first)
                and s.get("reconciliation", {}).get("step") is None
            ),
            "the recovered job",
        )
        assert status["lifecycleState"] in {"DEPLOYED", "STABLE"}
        assert status.get("error") is None
        messages: dict[str, str] = {}

        def recorded() -> bool:  # an Event follows the status write of its pass
            messages.update(
                (e["reason"], e["message"])
                for e in kube.list("v1", "events", NAMESPACE)
                if e.get("reason") in {"JobLost", "JobRecovered"}
            )
            return messages.keys() == {"JobLost", "JobRecovered"}

        kube.wait_for(recorded, timeout=10, what="the JobLost and JobRecovered Events")
        checkpoints = str(tmp_path / "checkpoints" / first)
        assert checkpoints in messages["JobLost"]
        assert f"job {first} recovered as job {live.job_id(status)}" in messages["JobRecovered"]
        # The JobManager restored the newest checkpoint of the lost job, not empty state.
        log = pod_runner.logs(jobmanager.name, NAMESPACE)
        assert f'"restore_point":"{checkpoints}/chk-' in log

        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons.count("Deployed") == 1
        assert "SubmitFailed" not in reasons
    assert_exact(tmp_path / "out", events=live.EVENTS)
