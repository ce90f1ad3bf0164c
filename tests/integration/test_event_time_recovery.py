"""Event time through restores: per-split watermarks, rescaling and late events, exactly.

The job (``tests/jobs/event_windows.py``) counts events per key in event-time
tumbling windows; its splits sit at different event times and some events are
late.  Every run, rescaled or crashed, must commit exactly the model's rows: an
on-time event dropped as late leaves a window short, a late event accepted
after a restore adds a row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from tests.conftest import Harness
from tests.integration.test_savepoints import stop_with_savepoint
from tests.jobs import event_windows

POSITIONS = 3_000  # per split
# Positions before it have no late events: by then (2 s into a run) every source subtask has
# sent the window operators a watermark, so a run without failures drops every late event.
LATE_FROM = 1_500


def args(out: Path, skew: int, **extra: object) -> list[str]:
    base = {"out": out, "positions": POSITIONS, "skew": skew, "late_from": LATE_FROM}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def assert_exact(out: Path, skew: int) -> None:
    got = event_windows.committed(str(out))
    want = event_windows.expected(POSITIONS, skew, LATE_FROM)
    missing, extra = want - got, got - want
    summary = (
        f"{sum(missing.values())} rows missing (e.g. {sorted(missing)[:3]}),"
        f" {sum(extra.values())} rows extra (e.g. {sorted(extra)[:3]})"
    )
    assert not missing, summary
    assert not extra, summary


@pytest.mark.parametrize(("before", "after"), [(3, 1), (3, 2), (1, 3), (2, 3)])
def test_a_rescaled_restore_of_skewed_splits_counts_every_on_time_event_and_no_late_one(
    cluster_factory: Callable[..., Harness], tmp_path: Path, before: int, after: int
) -> None:
    h = cluster_factory(taskmanagers=3)
    out = tmp_path / "out"
    # Split j starts 3 windows of event time after split j-1: a reader holding
    # several splits must follow the slowest one.
    job_args = args(out, skew=3_000)
    job = h.submit("event_windows", job_args, parallelism=before)
    stop_at = (LATE_FROM + 200) * event_windows.SPLITS  # late events have begun
    h.wait_for(f"{stop_at} source records", lambda: h.source_records(job) >= stop_at)
    location = stop_with_savepoint(h, job)
    assert h.source_records(job) < POSITIONS * event_windows.SPLITS, "ended before the stop"
    restored = h.submit("event_windows", job_args, parallelism=after, savepoint=location)
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out, skew=3_000)


@pytest.mark.parametrize("kill", [False, True])
def test_late_events_are_dropped_alike_with_and_without_a_killed_taskmanager(
    cluster_factory: Callable[..., Harness], tmp_path: Path, kill: bool
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("event_windows", args(out, skew=0), parallelism=2)
    if kill:
        kill_at = (LATE_FROM + 300) * event_windows.SPLITS
        h.wait_for(f"{kill_at} source records", lambda: h.source_records(job) >= kill_at)
        h.cluster.kill_taskmanager(0)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1 if kill else details.restarts == 0
    assert files.read_committed_lines(str(out)), "the job committed nothing"
    assert_exact(out, skew=0)
