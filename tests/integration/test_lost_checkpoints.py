"""A job that completed a checkpoint never restarts from empty state when it is lost."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from streamjob_runtime.api import models
from tests.conftest import Harness
from tests.integration.test_exactly_once_recovery import committed


def metric(h: Harness, name: str, job_id: str) -> float:
    text = h._call(lambda c: c.metrics())
    assert isinstance(text, str)
    for line in text.splitlines():
        if line.startswith(f'{name}{{job_id="{job_id}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name} for job {job_id} in:\n{text}")


def test_a_deleted_only_checkpoint_fails_the_job_naming_it_instead_of_restarting_empty(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    # A long interval: no other checkpoint completes between the deletion and the kill.
    job = h.submit(
        "keyed_sum",
        [f"out={out}", "events=-1", "keys=97", "rate=20000", "interval=5000", "retained=1"],
        parallelism=2,
    )
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    shutil.rmtree(latest.path)
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    assert details.restored_from is None
    cause = details.failure_cause or ""
    assert f"{latest.path} is missing" in cause
    assert "will not start from empty state" in cause
    history = [e.cause for e in h.exceptions(job).history]
    assert any(f"cannot restore {latest.path}" in c for c in history), history
    assert metric(h, "streamjob_restore_checkpoints_skipped_total", job) == 1
    # Nothing was emitted twice and no count restarted: each key's rolling counts are
    # exactly 1..n once each (what the exactly-once job committed before it failed).
    got = committed(out)
    assert got, "checkpoint 1 committed output"
    assert max(got.values()) == 1, "a line was committed twice"
    counts: dict[int, list[int]] = {}
    for key, n in got:
        counts.setdefault(key, []).append(n)
    for key, ns in counts.items():
        assert sorted(ns) == list(range(1, len(ns) + 1)), f"key {key} restarted its count"
