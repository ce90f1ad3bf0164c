"""A blue-green savepoint upgrade with real JobManagers and TaskManagers (tests.operator.live):
the new colour's pods run next to the old one's before the old job stops, the job moves
to them through the stop savepoint, the old colour goes, and the output is exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.test_exactly_once_recovery import assert_exact
from tests.kube import KubeEmulator, fixtures
from tests.kube.pods import PodRunner
from tests.operator import live, test_handlers, test_observing

kube = fixtures.kube
pod_runner = fixtures.pod_runner

COMPONENTS = ("jobmanager", "taskmanager")


def running(pod_runner: PodRunner, colour: str) -> bool:
    """Every Deployment of the colour has a ready pod that is not being deleted."""
    return all(
        any(p.ready and not p.terminating for p in pod_runner.processes(f"sum-{colour}-{c}"))
        for c in COMPONENTS
    )


def test_a_blue_green_savepoint_upgrade_runs_both_colours_then_moves_the_job_exactly(
    kube: KubeEmulator, pod_runner: PodRunner, tmp_path: Path
) -> None:
    spec = {**live.spec(tmp_path, 2), "upgradeStrategy": {"type": "blueGreen"}}
    with live.operator(kube, pod_runner):
        kube.create(test_observing.streamjob_body("sum", spec))
        first = live.job_id(live.wait_stable(kube, "sum"))
        assert first is not None
        assert test_handlers.status_of(kube, "sum")["blueGreen"]["active"] == "blue"

        live.patch(kube, "sum", {"image": "streamjob:test-2"})
        seen: list[dict[str, Any]] = []

        def both_colours_up() -> bool:
            if running(pod_runner, "blue") and running(pod_runner, "green"):
                seen.append(test_handlers.status_of(kube, "sum"))
                return True
            return False

        kube.wait_for(both_colours_up, timeout=60, what="blue's and green's pods running at once")
        before_switch = seen[0]
        assert before_switch["blueGreen"]["active"] == "blue", before_switch
        assert before_switch["reconciliation"]["step"] in ("deploy-next", "stop-active")

        status = live.wait_redeployed(kube, "sum", first, "the job on green")
        assert status["blueGreen"] == {"active": "green", "fallback": False}
        savepoint = status["lastSavepoint"]
        assert savepoint["trigger"] == "upgrade"
        assert status["reconciliation"]["restorePath"] == savepoint["location"]
        assert Path(savepoint["location"]).is_relative_to(tmp_path / "savepoints")
        kube.wait_for(
            lambda: all(not pod_runner.processes(f"sum-blue-{c}") for c in COMPONENTS),
            timeout=30,
            what="blue's pods gone",
        )
        assert kube.get("v1", "services", "sum-blue-jobmanager", test_observing.NAMESPACE) is None
        assert running(pod_runner, "green")

        # green's pods started before any of blue's was deleted: they ran side by side
        history = pod_runner.history()
        green_started = min(
            h.at for h in history if h.what == "started" and h.pod.startswith("sum-green-")
        )
        blue_deleted = min(
            h.at for h in history if h.what == "deleted" and h.pod.startswith("sum-blue-")
        )
        assert green_started < blue_deleted
        live.wait_finished(kube, "sum")
        # Switched follows the status write of the pass that saw blue's Deployments gone,
        # which may come after a fast job finished
        kube.wait_for(
            lambda: "Switched" in test_handlers.reasons(kube, "sum"),
            timeout=30,
            what="the Switched Event",
        )
        reasons = test_handlers.reasons(kube, "sum")
        assert reasons.index("Upgrading") < reasons.index("Switched")
    assert_exact(tmp_path / "out", events=live.EVENTS)
