"""CompletedCheckpointStore: the retained completed checkpoints of one job."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from streamjob_runtime import logs
from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.state import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletedCheckpoint:
    checkpoint_id: int
    timestamp: int
    directory: storage.Location
    duration_ms: float
    bytes: int
    alignment_ms: float
    kind: str = "checkpoint"


class CompletedCheckpointStore:
    """Keeps the newest ``retained`` checkpoints and discards older ones.

    :meth:`latest_valid` re-reads ``_metadata`` from storage: a checkpoint
    whose metadata is missing or corrupt is skipped, with a log line, for the
    previous complete one.
    """

    def __init__(
        self,
        job_dir: storage.Location,
        retained: int,
        initial: storage.Location | None = None,
        pointers: list[storage.Location] | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.retained = retained
        self.completed: list[CompletedCheckpoint] = []
        # With HA, only checkpoints recorded in the HA metadata count (a deposed
        # leader may have left a complete-looking directory that was never confirmed);
        # without HA, the job's checkpoint directory is scanned.
        self.pointers = pointers
        # Savepoints taken by this job and the savepoint it started from: restore
        # candidates too (a savepoint commits sink output, so a restore must not go
        # back before it), but never discarded by retention.
        self.restore_points: list[storage.Location] = [initial] if initial is not None else []

    def add_savepoint(self, savepoint: CompletedCheckpoint) -> None:
        self.restore_points.append(savepoint.directory)

    def add(self, checkpoint: CompletedCheckpoint) -> None:
        self.completed.append(checkpoint)
        if self.pointers is not None:
            self.pointers = [*self.pointers, checkpoint.directory][-self.retained :]
        while len(self.completed) > self.retained:
            self.completed.pop(0)
        oldest = self.completed[0].checkpoint_id
        if storage.is_remote(self.job_dir):
            # Listing and deleting objects is network I/O: off the JobManager's loop.
            threading.Thread(
                target=self._discard_before, args=(oldest,), name="retention", daemon=True
            ).start()
        else:
            self._discard_before(oldest)

    def _discard_before(self, oldest: int) -> None:
        for checkpoint_id in storage.checkpoint_ids(self.job_dir):
            if checkpoint_id < oldest:
                storage.discard(storage.checkpoint_dir(self.job_dir, checkpoint_id))

    def latest(self) -> CompletedCheckpoint | None:
        return self.completed[-1] if self.completed else None

    def _candidates(self) -> list[tuple[int, storage.Location]]:
        found: list[tuple[int, storage.Location]] = []
        recorded = self.restore_points
        if self.pointers is None:
            found = [
                (checkpoint_id, storage.checkpoint_dir(self.job_dir, checkpoint_id))
                for checkpoint_id in storage.checkpoint_ids(self.job_dir)
            ]
        else:
            recorded = [*self.pointers, *self.restore_points]
        for directory in recorded:
            try:
                found.append((metadata.read(directory).checkpoint_id, directory))
            except metadata.CorruptCheckpointError as e:
                logs.event(
                    log,
                    "checkpoint_skipped",
                    logging.WARNING,
                    directory=str(directory),
                    reason=str(e),
                    action="trying the previous checkpoint",
                )
        # By id, then by name: a Path and an s3:// location do not compare.
        return sorted(found, key=lambda f: (f[0], str(f[1])))

    def latest_valid(self) -> tuple[storage.Location, metadata.CheckpointMetadata] | None:
        """The newest checkpoint or savepoint whose metadata and files are intact."""
        for checkpoint_id, directory in reversed(self._candidates()):
            try:
                return directory, metadata.read(directory)
            except metadata.CorruptCheckpointError as e:
                logs.event(
                    log,
                    "checkpoint_skipped",
                    logging.WARNING,
                    checkpoint_id=checkpoint_id,
                    reason=str(e),
                    action="trying the previous checkpoint",
                )
        return None

    def max_id(self) -> int:
        """The highest checkpoint id seen: new checkpoints continue after it."""
        candidates = self._candidates()
        return candidates[-1][0] if candidates else 0
