"""Restart strategies decide whether a failing job restarts, and when."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from streamjob_runtime.api import models
from tests.conftest import Harness


def args(out: Path, **extra: object) -> list[str]:
    base: dict[str, object] = {"out": out, "events": 20_000, "rate": 50_000, "fail_at": 5_000}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def events(h: Harness, name: str) -> list[dict[str, object]]:
    log = (h.cluster.log_dir / "jobmanager.log").read_text()
    return [e for line in log.splitlines() if (e := json.loads(line))["event"] == name]


def test_exhausted_failure_rate_fails_the_job_with_its_cause(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = h.submit("keyed_sum", args(tmp_path / "out", restart="rate:2:60000:50"))
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    assert details.restarts == 2  # the third failure within the interval is one too many
    assert details.failure_cause is not None
    assert "boom at event 5000" in details.failure_cause
    history = h.exceptions(job).history
    assert len(history) == 3
    assert all("boom at event 5000" in e.cause for e in history)
    failed = events(h, "job_status_changed")[-1]
    assert failed["state"] == "FAILED"
    assert "failure-rate" in str(failed["reason"])


def test_fixed_delay_waits_its_delay_between_attempts(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = h.submit("keyed_sum", args(tmp_path / "out", restart="fixed:1:1500"))
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    assert details.restarts == 1
    failing = events(h, "job_failing")
    deploying = events(h, "job_deploying")
    assert len(failing) == 2
    assert len(deploying) == 2
    scheduled = events(h, "restart_scheduled")
    assert scheduled[0]["delay_ms"] == 1500
    waited = float(deploying[1]["ts"]) - float(failing[0]["ts"])  # type: ignore[arg-type]
    assert waited >= 1.5, f"restarted after {waited:.3f} s, before the 1.5 s delay"


def test_no_restart_strategy_fails_at_the_first_failure(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    job = h.submit("keyed_sum", args(tmp_path / "out", restart="none"))
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    assert details.restarts == 0
    assert len(h.exceptions(job).history) == 1
    assert not events(h, "restart_scheduled")


def test_default_strategy_with_checkpoints_restarts_after_a_taskmanager_loss(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    out = tmp_path / "out"
    # keyed_sum sets fixed-delay only when asked: "restart=default" leaves the engine default.
    job = h.submit("keyed_sum", [f"out={out}", "events=20000", "rate=10000", "restart=default"])
    h.wait_for("5000 source records", lambda: h.source_records(job) >= 5_000)
    h.cluster.kill_taskmanager(0)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED
    assert details.restarts == 1
    scheduled = events(h, "restart_scheduled")
    assert scheduled[0]["delay_ms"] == 1000
    assert "fixed-delay" in str(scheduled[0]["strategy"])


def test_expired_checkpoints_beyond_the_tolerance_fail_the_job(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    # The sink's pre-commit takes 1 s, the checkpoint timeout is 300 ms: every checkpoint
    # expires; the second consecutive failure exceeds the tolerance of 1.
    job = h.submit(
        "keyed_sum",
        [
            f"out={tmp_path / 'out'}",
            "events=-1",
            "rate=5000",
            "commit_delay=1.0",
            "interval=100",
            "timeout=300",
            "tolerable=1",
            "restart=none",
        ],
    )
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    cause = details.failure_cause or ""
    assert "expired after 300 ms" in cause
    assert "tolerable failed checkpoint count (1) is exceeded" in cause
    stats = h.checkpoints(job)
    assert stats.counts.completed == 0
    assert stats.counts.failed >= 2
    assert all(e.status == "FAILED" for e in stats.history)
