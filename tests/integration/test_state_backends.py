"""Jobs on the ``rocksdb`` state backend: crash recovery, and switching backends by savepoint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from tests.chaos import suite
from tests.chaos.test_chaos import QUICK, RESCALE, no_etcd
from tests.conftest import Harness
from tests.integration.test_exactly_once_recovery import EVENTS, args, assert_exact
from tests.integration.test_savepoints import stop_with_savepoint


def rocksdb_dirs(localdir: Path) -> list[Path]:
    root = localdir / "streamjob-rocksdb"
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.mark.parametrize("incremental", ["true", "false"])
def test_a_rocksdb_job_killed_mid_run_resumes_exactly(
    cluster_factory: Callable[..., Harness], tmp_path: Path, incremental: str
) -> None:
    h = cluster_factory(taskmanagers=2)
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    job = h.submit(
        "keyed_sum",
        args(out, backend="rocksdb", localdir=localdir, incremental=incremental),
        parallelism=2,
    )
    h.wait_for("12000 source records", lambda: h.source_records(job) >= 12_000)
    # The reduce's keyed state lives in one RocksDB per subtask, on disk (beside it, a
    # checkpoint in progress may have its local RocksDB checkpoint, ``<db>.chk-<id>``).
    dbs = {d.name.split(".chk-")[0] for d in rocksdb_dirs(localdir) if "-sum-" in d.name}
    assert len(dbs) == 2, dbs
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).latest_completed is not None)
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    sst = list((Path(latest.path).parent / "shared").rglob("*.sst"))
    sidecars = list(Path(latest.path).glob("*.shared"))
    if incremental == "true":
        assert sst, "incremental checkpoints upload SST files to shared/"
        assert sidecars, "each incremental state file lists its shared files"
    else:
        assert not sst
        assert not sidecars
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert_exact(out)
    # Closed subtasks delete their DBs (and local checkpoints); only the SIGKILLed
    # process's remain: one subtask of the first attempt.
    left = {d.name.split(".chk-")[0] for d in rocksdb_dirs(localdir)}
    assert len(left) <= 1
    assert all("-a1-" in name for name in left), left


@pytest.mark.parametrize(
    ("before", "after", "parallelism"),
    [("hashmap", "rocksdb", (1, 2)), ("rocksdb", "hashmap", (2, 1))],
)
def test_a_savepoint_switches_the_state_backend_and_the_parallelism(
    cluster_factory: Callable[..., Harness],
    tmp_path: Path,
    before: str,
    after: str,
    parallelism: tuple[int, int],
) -> None:
    h = cluster_factory(taskmanagers=2)
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    job = h.submit(
        "keyed_sum", args(out, backend=before, localdir=localdir), parallelism=parallelism[0]
    )
    h.wait_for("12000 source records", lambda: h.source_records(job) >= 12_000)
    location = stop_with_savepoint(h, job)
    assert h.source_records(job) < EVENTS, "the job ended before the stop"
    restored = h.submit(
        "keyed_sum",
        args(out, backend=after, localdir=localdir),
        parallelism=parallelism[1],
        savepoint=location,
    )
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out)


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_a_retained_incremental_checkpoint_restores_rescaled_into_either_backend(
    cluster_factory: Callable[..., Harness], tmp_path: Path, after: str
) -> None:
    """A new job restores a cancelled job's incremental checkpoint (its shared files) at 2 -> 3."""
    h = cluster_factory(taskmanagers=3)
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    job = h.submit(
        "keyed_sum", args(out, backend="rocksdb", localdir=localdir, retained=2), parallelism=2
    )
    h.wait_for("10000 source records", lambda: h.source_records(job) >= 10_000)
    h.wait_for("2 checkpoints", lambda: h.checkpoints(job).counts.completed >= 2)
    h.cancel(job)
    assert h.wait_terminal(job).state is models.JobStatus.CANCELED
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    assert list(Path(latest.path).glob("*.shared")), "not an incremental checkpoint"
    restored = h.submit(
        "keyed_sum",
        args(out, backend=after, localdir=localdir),
        parallelism=3,
        savepoint=latest.path,
    )
    details = h.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from == latest.id
    assert_exact(out)


@pytest.mark.parametrize(
    ("scenario", "seed", "config"), [("taskmanagers", 1, QUICK), ("rescale", 2, RESCALE)]
)
def test_the_chaos_job_on_rocksdb_is_exact_through_kills_and_rescales(
    tmp_path: Path, scenario: str, seed: int, config: suite.Config
) -> None:
    """Windows, value and map state, event-time timers on rocksdb: the quick chaos runs."""
    # Half the quick rate: the input must outlast the kills and rescales (RocksDB subtasks
    # take longer to start, so at the quick rate a run may end before its savepoints).
    rocks = dataclasses.replace(config, state_backend="rocksdb", rate=config.rate / 2)
    run = suite.run_one(scenario, tmp_path, seed, rocks, no_etcd)
    print(run.line())
    assert run.result.exact, run.line()
    assert run.tm_kills + run.rescales >= 1


def _rss_kib(pid: int, field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak) of process ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _checkpoint_state_bytes(checkpoint: Path) -> int:
    """Bytes of the SST files the incremental checkpoint at ``checkpoint`` references."""
    job_dir = checkpoint.parent
    refs = {
        line
        for sidecar in checkpoint.glob("*.shared")
        for line in sidecar.read_text().splitlines()
        if line
    }
    return sum((job_dir / "shared" / ref).stat().st_size for ref in refs)


MEMORY_BOUND = 32 * 1024 * 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_rocksdb_state_five_times_the_memory_bound_runs_exactly_with_bounded_rss(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """A TaskManager holds 5x more keyed state than its memory grows by, and checkpoints it.

    The TaskManager's peak RSS (``VmHWM``, reset when the job starts) may grow by
    at most ``MEMORY_BOUND`` while the state of the last checkpoint, on disk,
    is at least 5 times that; every key then reads its bytes back intact.
    """
    # A loaded machine stalls RocksDB's compactions, and with them the TaskManager's loop.
    h = cluster_factory(taskmanagers=1, heartbeat_timeout_ms=60_000)
    (pid,) = h.cluster.taskmanager_pids()
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    keys, size = 42_000, 4096  # 164 MiB of incompressible values
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    baseline = _rss_kib(pid, "VmRSS") * 1024
    job = h.submit(
        "large_state",
        [
            f"out={out}",
            f"keys={keys}",
            "rounds=2",
            f"size={size}",
            "interval=300",
            "D.state.backend.type=rocksdb",
            f"D.state.backend.rocksdb.localdir={localdir}",
            "D.state.backend.rocksdb.block.cache-size=4mb",
            "D.state.backend.rocksdb.writebuffer.size=4mb",
            "D.state.backend.rocksdb.writebuffer.count=2",
        ],
    )
    details = h.wait_terminal(job, timeout_s=180)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts == 0, [e.get("cause") for e in h.events("job_failing")]
    assert h.checkpoints(job).counts.completed >= 2
    growth = _rss_kib(pid, "VmHWM") * 1024 - baseline
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    state_bytes = _checkpoint_state_bytes(Path(latest.path))
    print(f"peak RSS growth {growth / 2**20:.1f} MiB, state {state_bytes / 2**20:.1f} MiB")
    assert growth <= MEMORY_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    assert state_bytes >= 5 * MEMORY_BOUND, f"state is {state_bytes / 2**20:.1f} MiB"
    lines = sorted(files.read_committed_lines(str(out)))
    assert lines == sorted(f"{k} 1" for k in range(keys))


def _restores(h: Harness) -> list[str]:
    """The ``source`` of every keyed-state restore of a RocksDB DB the TaskManagers logged."""
    return [
        event["source"]
        for line in h.cluster.logs().splitlines()
        if '"state_restored"' in line
        for event in [json.loads(line)]
    ]


def test_local_recovery_restores_a_failed_task_from_the_taskmanagers_copy(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """A task failure (the TaskManagers survive) restores the reduce's DBs from local copies."""
    h = cluster_factory(taskmanagers=2)
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    job = h.submit(
        "keyed_sum",
        args(
            out,
            backend="rocksdb",
            localdir=localdir,
            local_recovery="true",
            fail_once=f"{EVENTS // 2}:{tmp_path / 'failed-once'}",
        ),
        parallelism=2,
    )
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts == 1
    assert_exact(out)
    restores = _restores(h)
    assert restores == ["local", "local"], restores  # both reduce subtasks, no download
    # The job finished: its local copies are gone.
    assert not [p for p in (localdir / "streamjob-localstate").rglob("chk-*")]


def test_local_recovery_falls_back_to_checkpoint_storage_when_the_taskmanager_died(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    """A SIGKILLed TaskManager's copies die with it: its subtask restores from storage."""
    h = cluster_factory(taskmanagers=2)
    out, localdir = tmp_path / "out", tmp_path / "rocks"
    job = h.submit(
        "keyed_sum",
        args(out, backend="rocksdb", localdir=localdir, local_recovery="true"),
        parallelism=2,
    )
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).latest_completed is not None)
    assert list((localdir / "streamjob-localstate").rglob("chk-*")), "no local copy kept"
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    assert_exact(out)
    restores = _restores(h)
    assert "remote" in restores, restores
    assert len(restores) >= 2, restores
