"""A deployment the JobManager refuses, then fixed, with real JobManagers and TaskManagers
(tests.operator.live): the refusal shows at once (status error, Degraded, one Warning
Event), and the fixed spec replaces the target of the deployment under way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE

kube = fixtures.kube
pod_runner = fixtures.pod_runner


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in status.get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


def warnings(kube: KubeEmulator, reason: str) -> list[str]:
    return [
        e["message"]
        for e in kube.list("v1", "events", NAMESPACE)
        if e.get("reason") == reason and e.get("type") == "Warning"
    ]


def test_a_refused_submission_shows_at_once_and_a_fixed_entrypoint_is_deployed_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    spec = live.spec(tmp_path)
    good = spec["job"]["entrypoint"]
    spec["job"]["entrypoint"] = str(Path(good).with_name("no_such_job.py"))
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", spec))
        # Well before stability.timeout (2m): the JobManager's 400, in status and an Event.
        status = live.wait_status(
            kube,
            "sum",
            lambda s: "refused" in (s.get("error") or ""),
            "the refusal in status",
            timeout=30,
        )
        assert "no_such_job.py" in status["error"]
        assert "fix the spec and apply it" in status["error"]
        assert condition(status, "Degraded")["status"] == "True"
        assert status["reconciliation"]["step"] == "submit-job"
        kube.wait_for(  # an Event follows the status write of its pass
            lambda: warnings(kube, "SubmitFailed") != [],
            timeout=10,
            what="the SubmitFailed Event",
        )
        [event] = warnings(kube, "SubmitFailed")
        assert "no_such_job.py" in event

        live.patch(kube, "sum", {"job": {"entrypoint": good}})
        status = live.wait_stable(kube, "sum")
        assert status.get("error") is None
        assert condition(status, "Degraded")["status"] == "False"
        assert good in status["reconciliation"]["lastReconciledSpec"]
        live.wait_finished(kube, "sum")
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons.count("SubmitFailed") == 1
        assert "Retargeted" in reasons
        assert reasons.count("Deployed") == 1
    assert_exact(tmp_path / "out", events=live.EVENTS)


def test_a_resume_of_the_same_spec_passes_the_stability_gate_again(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", live.spec(tmp_path)))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        live.patch(kube, "sum", {"job": {"state": "suspended"}})
        live.wait_status(kube, "sum", lambda s: s.get("lifecycleState") == "SUSPENDED", "SUSPENDED")

        live.patch(kube, "sum", {"job": {"state": "running"}})  # the last stable spec again
        resumed = live.wait_redeployed(kube, "sum", first, "the resumed job")
        # The new job earns STABLE: the gate runs again, with its condition and Event.
        assert resumed["lifecycleState"] in {"DEPLOYED", "STABLE"}
        kube.wait_for(
            lambda: test_handlers.reasons(kube, "sum").count("Stable") == 2,
            timeout=60,
            what="a second Stable event",
        )
        status = live.wait_stable(kube, "sum")
        assert condition(status, "Stable")["status"] == "True"
        live.wait_finished(kube, "sum")
    assert_exact(tmp_path / "out", events=live.EVENTS)
