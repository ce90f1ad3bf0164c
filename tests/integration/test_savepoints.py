"""Savepoints: stop, restore (also rescaled and copied), non-restored state, failures."""

from __future__ import annotations

import collections
import json
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamjob_runtime.api import client, models
from streamjob_runtime.checkpoint import savepoint
from streamjob_runtime.connectors import files
from streamjob_runtime.state import storage
from tests.conftest import Harness
from tests.integration.test_exactly_once_recovery import EVENTS, KEYS, args, assert_exact
from tests.jobs import keyed_sum

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import clickstream  # noqa: E402


def stop_with_savepoint(h: Harness, job: str, drain: bool = False) -> str:
    info = h.wait_savepoint(job, h.stop(job, drain))
    assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
    assert info.location is not None
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED
    return info.location


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_savepoint_stop_and_restore_at_another_parallelism_gives_the_exact_output(
    cluster_factory: Callable[..., Harness], tmp_path: Path, before: int, after: int
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out), parallelism=before)
    h.wait_for("12000 source records", lambda: h.source_records(job) >= 12_000)
    location = stop_with_savepoint(h, job)
    assert h.source_records(job) < EVENTS, "the job ended before the stop"
    restored = h.submit("keyed_sum", args(out), parallelism=after, savepoint=location)
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out)


def click_counts(out: Path) -> collections.Counter[tuple[str, int]]:
    total: collections.Counter[tuple[str, int]] = collections.Counter()
    for line in files.read_committed_lines(str(out)):
        row = json.loads(line)
        total[(row["user"], row["window_start"])] += row["clicks"]
    return total


@pytest.mark.parametrize("drain", [False, True])
def test_window_state_rescales_from_2_to_3_through_a_savepoint(
    cluster_factory: Callable[..., Harness], tmp_path: Path, drain: bool
) -> None:
    h = cluster_factory(taskmanagers=3)
    out = tmp_path / "out"
    job_file = str(EXAMPLES / "clickstream.py")
    job_args = [str(out), "60000", "30000"]
    job = h.submit(job_file, job_args, parallelism=2)
    h.wait_for("15000 clicks", lambda: h.source_records(job) >= 15_000)
    location = stop_with_savepoint(h, job, drain)
    rows_before = len(files.read_committed_lines(str(out)))
    restored = h.submit(job_file, job_args, parallelism=3, savepoint=location)
    assert h.wait_terminal(restored).state is models.JobStatus.FINISHED
    # Every click is counted exactly once, whichever run counted it.
    assert click_counts(out) == clickstream.expected_counts(60_000)
    rows = len(files.read_committed_lines(str(out)))
    windows = len(clickstream.expected_counts(60_000))
    if drain:
        # Draining fired the open windows early: they appear twice, partly counted.
        assert rows_before > 0
        assert rows > windows
    else:
        assert rows == windows  # windows in flight were restored, not fired


def test_a_drained_savepoint_saves_no_window_watermark_ahead_of_a_source_split(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # The two source subtasks get the drain at different times; the one drained last
    # reads on meanwhile. The window's saved watermark must not follow it past the
    # split of the other one, or the restored job drops that split's on-time records.
    h = cluster_factory(taskmanagers=2)
    job_args = [str(tmp_path / "out"), "60000", "30000"]
    job = h.submit(str(EXAMPLES / "clickstream.py"), job_args, parallelism=2)
    h.wait_for("15000 clicks", lambda: h.source_records(job) >= 15_000)
    directory, meta = savepoint.resolve(stop_with_savepoint(h, job, drain=True))
    saved: dict[str, list[Any]] = {}
    for uid, state in meta.operators.items():
        for handle in state.handles:
            data = storage.read_bytes(directory / handle.file)
            saved.setdefault(uid, []).extend(pickle.loads(data)[1])
    splits = [s.watermark for s in saved["clicks"]]
    windows = saved["clicks-per-user-window"]
    assert len(splits) == 2
    assert windows
    assert max(windows) <= min(splits), (windows, splits)


def test_a_copied_savepoint_restores(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out))
    h.wait_for("10000 source records", lambda: h.source_records(job) >= 10_000)
    info = h.wait_savepoint(job, h.trigger_savepoint(job, cancel=True))
    assert info.status is models.SavepointStatus.COMPLETED
    assert h.wait_terminal(job).state is models.JobStatus.CANCELED
    assert info.location is not None
    moved = tmp_path / "elsewhere" / "sp"
    shutil.copytree(info.location, moved)
    shutil.rmtree(info.location)
    restored = h.submit("keyed_sum", args(out), savepoint=str(moved / "_metadata"))
    assert h.wait_terminal(restored).state is models.JobStatus.FINISHED
    assert_exact(out)


def test_state_of_a_removed_operator_is_refused_unless_allowed_and_new_operators_start_empty(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out))
    h.wait_for("10000 source records", lambda: h.source_records(job) >= 10_000)
    location = stop_with_savepoint(h, job)
    committed_before = len(files.read_committed_lines(str(out)))
    renamed = args(out, sum_uid="sum-v2")
    with pytest.raises(client.RestError, match=r"HTTP 400.*operators the job does not have: sum;"):
        h.submit("keyed_sum", renamed, savepoint=location)
    restored = h.submit("keyed_sum", renamed, savepoint=location, allow_non_restored_state=True)
    assert h.wait_terminal(restored).state is models.JobStatus.FINISHED
    lines = files.read_committed_lines(str(out))
    new = collections.Counter(tuple(map(int, line.split())) for line in lines[committed_before:])
    # "sum-v2" started empty: its counts restart at 1 for every key ...
    for key in range(KEYS):
        assert (key, 1) in new
    # ... while the source resumed from its restored offsets: no event was replayed.
    assert sum(new.values()) + committed_before == EVENTS


def test_a_savepoint_triggered_while_a_checkpoint_is_in_flight_completes(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, commit_delay=0.3, interval=200), parallelism=2)
    h.wait_for("a checkpoint in flight", lambda: h.checkpoints(job).counts.in_progress >= 1)
    info = h.wait_savepoint(job, h.trigger_savepoint(job))
    assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
    assert info.location is not None
    assert (Path(info.location) / "_metadata").is_file()
    assert h.wait_terminal(job).state is models.JobStatus.FINISHED
    assert_exact(out)
    kinds = {e.kind for e in h.checkpoints(job).history}
    assert kinds == {"checkpoint", "savepoint"}


def test_a_savepoint_interrupted_by_a_taskmanager_death_fails_and_a_retry_succeeds(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    # The sink's pre-commit takes 1 s: the savepoint is in flight when the TaskManager dies.
    job = h.submit("keyed_sum", args(out, commit_delay=1.0, interval=5000), parallelism=2)
    h.wait_for("5000 source records", lambda: h.source_records(job) >= 5_000)
    request = h.trigger_savepoint(job)
    h.cluster.kill_taskmanager(0)
    failed = h.wait_savepoint(job, request)
    assert failed.status is models.SavepointStatus.FAILED
    assert failed.failure_cause
    assert "savepoint failed" in failed.failure_cause
    h.wait_for(
        "the recovery",
        lambda: (d := h.job(job)).restarts >= 1 and d.state is models.JobStatus.RUNNING,
    )
    retry = h.wait_savepoint(job, h.trigger_savepoint(job))
    assert retry.status is models.SavepointStatus.COMPLETED, retry.failure_cause
    assert h.wait_terminal(job).state is models.JobStatus.FINISHED
    assert_exact(out)


def test_a_retained_checkpoint_of_a_cancelled_job_restores(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, retained=2))
    h.wait_for("10000 source records", lambda: h.source_records(job) >= 10_000)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    h.cancel(job)
    assert h.wait_terminal(job).state is models.JobStatus.CANCELED
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    restored = h.submit("keyed_sum", args(out), savepoint=latest.path)
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from == latest.id
    assert_exact(out)


def lines_of_job(out: Path, job_id: str) -> collections.Counter[tuple[int, int]]:
    """Committed lines of the parts one job committed (part names carry the job id)."""
    lines: collections.Counter[tuple[int, int]] = collections.Counter()
    for part in out.glob(f"part-sink-{job_id[:8]}-*"):
        for line in part.read_text().splitlines():
            key, count = line.split()
            lines[(int(key), int(count))] += 1
    return lines


def test_a_job_forked_from_a_savepoint_into_the_same_sink_leaves_the_running_job_alone(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    # A restart would hide the damage: the original fails at once if its files are touched.
    running = h.submit("keyed_sum", args(out, rate=8_000, restart="none"))
    h.wait_for("8000 source records", lambda: h.source_records(running) >= 8_000)
    info = h.wait_savepoint(running, h.trigger_savepoint(running))
    assert info.status is models.SavepointStatus.COMPLETED, info.failure_cause
    assert info.location is not None
    fork = h.submit("keyed_sum", args(out), savepoint=info.location)
    assert h.source_records(running) < EVENTS, "the original ended before the fork started"
    forked = h.wait_terminal(fork)
    assert forked.state is models.JobStatus.FINISHED, forked.failure_cause
    original = h.wait_terminal(running)
    assert original.state is models.JobStatus.FINISHED, original.failure_cause
    # The original committed its whole exact output ...
    assert lines_of_job(out, running) == keyed_sum.expected(EVENTS, KEYS)
    # ... and the fork continued every key's count from the savepoint to its end.
    continued = lines_of_job(out, fork)
    assert max(continued.values()) == 1
    want = keyed_sum.expected(EVENTS, KEYS)
    for key in range(KEYS):
        counts = sorted(n for k, n in continued if k == key)
        assert counts == list(range(counts[0], counts[-1] + 1))
        assert counts[-1] == max(n for k, n in want if k == key)


def test_a_job_its_jobmanager_lost_restores_from_the_newest_checkpoint_in_its_directory(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    first = cluster_factory()
    out = tmp_path / "out"
    job = first.submit("keyed_sum", args(out, retained=3))
    first.wait_for("10000 source records", lambda: first.source_records(job) >= 10_000)
    first.wait_for("two checkpoints", lambda: first.checkpoints(job).counts.completed >= 2)
    first.cluster.kill_jobmanager(0)  # no HA: the job is gone with its JobManager
    first.cluster.stop()
    assert first.cluster.checkpoint_dir is not None
    job_dir = Path(first.cluster.checkpoint_dir) / job
    newest = max(int(d.parent.name[4:]) for d in job_dir.glob("chk-*/_metadata"))

    # A fresh JobManager (as a restarted pod) knows nothing of the job, but its directory.
    second = cluster_factory()
    submission = models.JobSubmission(
        entrypoint=str(Path(__file__).parents[1] / "jobs" / "keyed_sum.py"),
        args=args(out),
        restore_from_latest_in=str(job_dir),
    )
    restored = second._call(lambda c: c.submit(submission))
    assert isinstance(restored, str)
    details = second.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from == newest
    assert_exact(out)


def test_a_lost_job_with_no_checkpoint_and_no_savepoint_is_refused(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory()
    submission = models.JobSubmission(
        entrypoint=str(Path(__file__).parents[1] / "jobs" / "keyed_sum.py"),
        args=args(tmp_path / "out"),
        restore_from_latest_in=str(tmp_path / "checkpoints" / "lost"),
    )
    with pytest.raises(client.RestError) as refused:
        h._call(lambda c: c.submit(submission))
    assert refused.value.status == 400
    assert "nothing to restore the job from" in refused.value.message
