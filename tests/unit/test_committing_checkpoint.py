"""A checkpoint whose completion already wrote the HA metadata is never discarded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from streamjob_runtime import config
from streamjob_runtime.checkpoint import coordinator, store
from streamjob_runtime.ha import services
from streamjob_runtime.state import storage


class BlockingPersistence:
    """HA metadata whose write for a completed checkpoint waits until released."""

    def __init__(self) -> None:
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def reserve(self, next_checkpoint_id: int) -> None:
        pass

    async def completed(self, checkpoint: store.CompletedCheckpoint) -> None:
        self.writing.set()  # from here on a new leader may read it in the HA metadata
        await self.release.wait()


class FailingPersistence:
    """HA metadata whose write for a completed checkpoint fails with ``error``."""

    def __init__(self, error: services.FencedError) -> None:
        self.error = error

    async def reserve(self, next_checkpoint_id: int) -> None:
        pass

    async def completed(self, checkpoint: store.CompletedCheckpoint) -> None:
        raise self.error


def _coordinator(
    job_dir: Path, persistence: coordinator.CheckpointPersistence, failures: list[str]
) -> tuple[coordinator.CheckpointCoordinator, coordinator.PendingCheckpoint]:
    """A coordinator with checkpoint 1 acknowledged by every task, its directory made."""

    async def fail_job(reason: str) -> None:
        failures.append(reason)

    c = coordinator.CheckpointCoordinator(
        job_id="job",
        job_dir=job_dir,
        cfg=config.CheckpointConfig(interval_ms=1_000),
        max_parallelism=128,
        operator_parallelism={"op": 1},
        completed_store=store.CompletedCheckpointStore(job_dir, retained=1),
        next_checkpoint_id=1,
        fail_job=fail_job,
        persistence=persistence,
    )
    directory = storage.checkpoint_dir(job_dir, 1)
    assert isinstance(directory, Path)
    directory.mkdir(parents=True)
    pending = coordinator.PendingCheckpoint(
        1, int(time.time() * 1000), time.monotonic(), set(), directory=directory
    )
    c.pending[1] = pending
    return c, pending


def test_a_checkpoint_the_ha_metadata_may_name_is_not_discarded_by_an_abort(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        failures: list[str] = []
        persistence = BlockingPersistence()
        c, pending = _coordinator(tmp_path / "job", persistence, failures)
        directory = pending.directory
        assert isinstance(directory, Path)
        completing = asyncio.create_task(c._complete(pending))
        await persistence.writing.wait()
        await c.stop("the attempt failed")  # aborts what is in flight: not this one
        persistence.release.set()
        await completing
        latest = c.store.latest()
        assert latest is not None
        assert latest.checkpoint_id == 1
        assert (directory / "_metadata").is_file()
        assert failures == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("error", "kept"),
    [
        # Seen in the chaos suite: the leader was SIGSTOPped during the etcd write, which
        # landed; its answer timed out, the files were deleted, the next leader failed.
        (services.WriteOutcomeUnknown("HA metadata write to etcd failed: TimeoutError()"), True),
        (services.FencedError("epoch 2 is no longer the leader's"), False),
    ],
)
def test_a_checkpoint_whose_ha_write_may_have_landed_keeps_its_files(
    tmp_path: Path, error: services.FencedError, kept: bool
) -> None:
    """A fenced write certainly did not land: the checkpoint's files go. One whose answer
    never came may have: a successor may restore it, so they stay."""

    async def scenario() -> None:
        failures: list[str] = []
        c, pending = _coordinator(tmp_path / "job", FailingPersistence(error), failures)
        directory = pending.directory
        assert isinstance(directory, Path)
        await c._complete(pending)
        assert c.store.latest() is None  # never completed here, whatever happened
        assert pending.failure is not None
        assert "not the leader any more" in pending.failure
        assert (directory / "_metadata").is_file() is kept
        assert directory.exists() is kept

    asyncio.run(scenario())
