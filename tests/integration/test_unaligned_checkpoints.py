"""Unaligned checkpoints under back-pressure: exactly-once through SIGKILLs and rescaling.

The job (tests/jobs/keyed_sum.py) has a sink much slower than its source, so
every input channel of the sink's task is full: an aligned barrier would wait
behind all of it.  Unaligned checkpoints store that in-flight data with the
checkpoint (channel state) and replay it on restore; the exact output proves
each record counted once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.state import storage
from streamjob_runtime.taskmanager import channelstate
from tests.conftest import Harness
from tests.integration import test_s3_storage
from tests.integration.test_exactly_once_recovery import assert_exact, assert_finished_exactly
from tests.integration.test_savepoints import stop_with_savepoint

s3 = test_s3_storage.s3  # the fixture: moto's S3 server behind a proxy

EVENTS = 20_000
KEYS = 97


def args(out: Path, **extra: object) -> list[str]:
    # Batches of 100 records, a sink that writes 2500 records/s per subtask (whatever
    # the size of the batches it gets), while the source could emit far more.
    # Checkpoints every 150 ms.
    base: dict[str, object] = {
        "out": out,
        "events": EVENTS,
        "keys": KEYS,
        "batch": 100,
        "sink_rate": 2500,
        "interval": 150,
        "unaligned": "true",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def unaligned_with_data(h: Harness, job: str) -> list[models.CheckpointEntry]:
    return [
        c
        for c in h.checkpoints(job).history
        if c.status == "COMPLETED" and c.unaligned and c.persisted_data_bytes > 0
    ]


def latest_has_channel_state(h: Harness, job: str) -> bool:
    latest = h.checkpoints(job).latest_completed
    if latest is None:
        return False
    meta = metadata.read(storage.location(latest.path))
    return any(hd.has_channel_state for op in meta.operators.values() for hd in op.handles)


def test_back_pressured_job_takes_unaligned_checkpoints_with_in_flight_data(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out), parallelism=2)
    h.wait_for(
        "an unaligned checkpoint with in-flight data", lambda: bool(unaligned_with_data(h, job))
    )
    entry = unaligned_with_data(h, job)[0]
    stored = [s for s in entry.subtasks if s.persisted_data_bytes > 0]
    assert stored
    assert all(s.unaligned for s in stored)
    assert entry.persisted_data_bytes == sum(s.persisted_data_bytes for s in entry.subtasks)
    body = h._call(lambda c: c.metrics())
    assert isinstance(body, str)
    assert f'streamjob_last_checkpoint_persisted_data_bytes{{job_id="{job}"}}' in body
    assert f'streamjob_last_checkpoint_unaligned{{job_id="{job}"}}' in body
    config = h.checkpoints(job).config
    assert config is not None
    assert config.unaligned
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts == 0
    assert_exact(out, EVENTS)


def channel_state_of(directory: str, uid: str | None = None) -> int:
    """Bytes of channel state the checkpoint or savepoint at ``directory`` holds (for the
    task headed by operator ``uid``)."""
    meta = metadata.read(storage.location(directory))
    return sum(
        hd.size
        for name, op in meta.operators.items()
        for hd in op.handles
        if hd.has_channel_state and uid in (None, name)
    )


def test_killed_taskmanager_under_back_pressure_resumes_exactly_from_in_flight_data(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, retained=3), parallelism=2)
    h.wait_for("a checkpoint with in-flight data", lambda: latest_has_channel_state(h, job))
    h.cluster.kill_taskmanager(1)
    h.wait_for("the restore", lambda: h.checkpoints(job).latest_restored is not None)
    restored = h.checkpoints(job).latest_restored
    assert restored is not None
    assert_finished_exactly(h, job, out, events=EVENTS)
    # The restore replayed stored in-flight records (each task logs how many).
    assert '"channel_state_restored"' in h.cluster.logs()


def test_restore_with_in_flight_data_at_another_parallelism_is_exact(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # A rebalance edge feeds the map, a keyed edge the sum (and the slow sink behind it):
    # both tasks store in-flight data, redistributed by rule and by key group.
    first = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = first.submit("keyed_sum", args(out, retained=3, rebalance="true"), parallelism=2)

    def both_stored() -> bool:
        latest = first.checkpoints(job).latest_completed
        return latest is not None and all(
            channel_state_of(latest.path, uid) > 0 for uid in ("check", "sum")
        )

    first.wait_for("a checkpoint with in-flight data into both tasks", both_stored)
    first.cluster.kill_jobmanager(0)  # no HA: the job is gone, its checkpoints stay
    first.cluster.stop()
    assert first.cluster.checkpoint_dir is not None
    job_dir = Path(first.cluster.checkpoint_dir) / job
    with_data = sorted(
        (int(m.parent.name[4:]), m.parent)
        for m in job_dir.glob("chk-*/_metadata")
        if all(channel_state_of(str(m.parent), uid) > 0 for uid in ("check", "sum"))
    )
    assert with_data, "no retained checkpoint holds in-flight data into both tasks"
    checkpoint_id, directory = with_data[-1]

    second = cluster_factory(taskmanagers=3)
    restored = second.submit(
        "keyed_sum", args(out, rebalance="true"), parallelism=3, savepoint=str(directory)
    )
    details = second.wait_terminal(restored)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from == checkpoint_id
    assert_exact(out, EVENTS)


def aligned_checkpoints(h: Harness, job: str) -> list[models.CheckpointEntry]:
    return [
        c
        for c in h.checkpoints(job).history
        if c.status == "COMPLETED" and c.kind == "checkpoint" and not c.unaligned
    ]


def test_switching_between_aligned_and_unaligned_through_savepoints_is_exact(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=3)
    out = tmp_path / "out"
    # Unaligned at parallelism 2; the savepoint taken by stop is aligned (no in-flight data).
    first = h.submit("keyed_sum", args(out), parallelism=2)
    h.wait_for(
        "an unaligned checkpoint with in-flight data", lambda: bool(unaligned_with_data(h, first))
    )
    one = stop_with_savepoint(h, first)
    assert channel_state_of(one) == 0
    # Aligned at parallelism 3 from it, stopped again once it checkpointed aligned.
    second = h.submit("keyed_sum", args(out, unaligned="false"), parallelism=3, savepoint=one)
    h.wait_for("an aligned checkpoint", lambda: bool(aligned_checkpoints(h, second)))
    assert not [c for c in h.checkpoints(second).history if c.unaligned]
    two = stop_with_savepoint(h, second)
    # Unaligned again, at parallelism 2, to the end.
    third = h.submit("keyed_sum", args(out), parallelism=2, savepoint=two)
    details = h.wait_terminal(third)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restored_from is not None
    assert_exact(out, EVENTS)


def test_aligned_checkpoint_timeout_switches_back_pressured_checkpoints_to_unaligned(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, aligned_timeout=40, retained=3), parallelism=2)
    h.wait_for("a checkpoint that went unaligned", lambda: bool(unaligned_with_data(h, job)))
    h.wait_for("a checkpoint with in-flight data", lambda: latest_has_channel_state(h, job))
    h.cluster.kill_taskmanager(0)
    assert_finished_exactly(h, job, out, events=EVENTS)


def test_a_long_aligned_checkpoint_timeout_keeps_checkpoints_aligned(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, aligned_timeout=60_000), parallelism=2)
    h.wait_for("two aligned checkpoints", lambda: len(aligned_checkpoints(h, job)) >= 2)
    assert not [c for c in h.checkpoints(job).history if c.unaligned]
    h.cancel(job)


def test_in_flight_data_on_s3_is_restored_exactly_after_a_kill(
    s3: test_s3_storage.S3, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, checkpoint_dir=s3.url("checkpoints"))
    out = tmp_path / "out"
    events = 12_000  # a shorter job: every checkpoint is a round of S3 requests
    job = h.submit("keyed_sum", args(out, retained=3, interval=400, events=events), parallelism=2)
    h.wait_for("a checkpoint with in-flight data", lambda: latest_has_channel_state(h, job))
    assert any(k.endswith(channelstate.SUFFIX) for k in s3.keys(f"checkpoints/{job}/"))
    h.cluster.kill_taskmanager(1)
    assert_finished_exactly(h, job, out, events=events)
