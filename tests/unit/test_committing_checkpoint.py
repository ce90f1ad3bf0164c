"""A checkpoint whose completion already wrote the HA metadata is never discarded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from streamjob_runtime import config
from streamjob_runtime.checkpoint import coordinator, store
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


def test_a_checkpoint_the_ha_metadata_may_name_is_not_discarded_by_an_abort(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        failures: list[str] = []

        async def fail_job(reason: str) -> None:
            failures.append(reason)

        job_dir = tmp_path / "job"
        persistence = BlockingPersistence()
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
