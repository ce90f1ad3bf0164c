"""Incremental checkpoints of the ``hashmap`` backend: unchanged timer tables in ``shared/``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from streamjob_runtime.state import shared
from tests.conftest import Harness
from tests.integration.test_savepoints import stop_with_savepoint
from tests.jobs import keyed_timers

EVENTS, KEYS = 40_000, 200


def args(out: Path, **extra: object) -> list[str]:
    base: dict[str, object] = {
        "out": out,
        "events": EVENTS,
        "keys": KEYS,
        "rate": 8_000,
        "interval": 100,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def assert_exact(out: Path) -> None:
    rows: dict[int, tuple[int, int]] = {}
    for line in files.read_committed_lines(str(out)):
        k, c, s = (int(x) for x in line.split())
        assert k not in rows, f"key {k} has two rows: a duplicate"
        rows[k] = (c, s)
    assert rows == keyed_timers.expected(EVENTS, KEYS)


def stored_tables(job_dir: Path) -> set[str]:
    root = job_dir / shared.SHARED
    return {str(p.relative_to(root)) for p in root.rglob("*.table")} if root.is_dir() else set()


def referenced(job_dir: Path) -> set[str]:
    return set().union(*(shared.references(d) for d in job_dir.glob("chk-*")))


def wait_for_shared_reference(h: Harness, job: str) -> models.CompletedCheckpointInfo:
    """The first completed checkpoint whose state references a table in ``shared/``."""

    def latest() -> models.CompletedCheckpointInfo | None:
        found = h.checkpoints(job).latest_completed
        return found if found is not None and shared.references(Path(found.path)) else None

    h.wait_for("a checkpoint referencing a shared table", lambda: latest() is not None)
    found = latest()
    assert found is not None
    return found


def test_a_hashmap_job_killed_after_incremental_checkpoints_resumes_exactly(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_timers", args(out), parallelism=2)
    checkpoint = wait_for_shared_reference(h, job)
    job_dir = Path(checkpoint.path).parent
    before = shared.references(Path(checkpoint.path))
    assert before <= stored_tables(job_dir)
    assert h.source_records(job) < EVENTS, "the job ended before the kill"
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert_exact(out)
    # The files of superseded checkpoints are gone: only those a retained checkpoint
    # references are left (the restarted attempt wrote its own).
    assert stored_tables(job_dir) == referenced(job_dir)
    assert not before & stored_tables(job_dir)


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_an_incremental_hashmap_checkpoint_restores_at_another_parallelism(
    cluster_factory: Callable[..., Harness], tmp_path: Path, after: str
) -> None:
    """A new job restores a cancelled job's checkpoint (its shared tables) at 1 -> 2, into
    either backend."""
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_timers", args(out, retained=2), parallelism=1)
    checkpoint = wait_for_shared_reference(h, job)
    h.cancel(job)
    assert h.wait_terminal(job).state is models.JobStatus.CANCELED
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    assert latest.id >= checkpoint.id
    assert shared.references(Path(latest.path)), "not an incremental checkpoint"
    restored = h.submit(
        "keyed_timers",
        args(out, backend=after, localdir=tmp_path / "rocks"),
        parallelism=2,
        savepoint=latest.path,
    )
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from == latest.id
    assert_exact(out)


def test_a_savepoint_of_an_incremental_hashmap_job_is_self_contained(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """Checkpoints reference shared tables; the savepoint writes them whole, and restores 1 -> 2
    without the job directory's shared files."""
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_timers", args(out), parallelism=1)
    checkpoint = wait_for_shared_reference(h, job)
    location = stop_with_savepoint(h, job)
    assert not list(Path(location).glob(f"*{shared.SUFFIX}")), "a savepoint references files"
    shutil.rmtree(Path(checkpoint.path).parent / shared.SHARED)
    restored = h.submit("keyed_timers", args(out), parallelism=2, savepoint=location)
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out)
