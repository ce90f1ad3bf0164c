"""CompletedCheckpointStore: the retained completed checkpoints of one job."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from streamjob_runtime import logs
from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.state import shared, storage

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


@dataclass(frozen=True)
class SkippedCheckpoint:
    """A retained checkpoint or savepoint a restore could not use, and why."""

    directory: storage.Location
    reason: str
    checkpoint_id: int  # as recorded when it completed (0 for the savepoint a job started from)


@dataclass(frozen=True)
class RestoreSelection:
    """What a restore should use: the newest intact restore point, and what it skipped.

    ``required`` is true once a checkpoint completed or a savepoint was given:
    the job then must not start from empty state, so ``restore`` None means the
    job fails (:meth:`missing_message` says why).
    """

    restore: tuple[storage.Location, metadata.CheckpointMetadata] | None
    skipped: tuple[SkippedCheckpoint, ...]
    required: bool

    def missing_message(self, job_id: str) -> str:
        listed = "; ".join(f"{s.directory}: {s.reason}" for s in self.skipped)
        return (
            f"job {job_id} has completed a checkpoint or has a savepoint to restore, but none"
            f" can be restored ({listed});"
            " it will not start from empty state. Put the checkpoint back, or submit the job"
            " again from a savepoint you trust (--from-savepoint) or without one to start empty"
        )


class CompletedCheckpointStore:
    """Keeps the newest ``retained`` checkpoints and discards older ones.

    :meth:`select_restore` re-reads ``_metadata`` from storage: a checkpoint
    whose directory or metadata is missing or corrupt is skipped, with a log
    line, for the previous complete one.

    With HA (``recovered`` not None) the store starts from the checkpoints the
    HA metadata lists (Flink's ``CompletedCheckpointStore`` recovered from the
    ``CheckpointStoreUtil``), and only those count: a deposed leader may have
    left a complete-looking directory that was never confirmed. Without HA the
    job's checkpoint directory is scanned, and checkpoints this store saw
    complete are candidates even when their directory is gone (so a deleted
    checkpoint is reported, not silently passed over).
    """

    def __init__(
        self,
        job_dir: storage.Location,
        retained: int,
        initial: storage.Location | None = None,
        recovered: list[storage.Location] | None = None,
        recovered_savepoints: list[tuple[int, storage.Location]] | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.retained = retained
        self.completed: list[CompletedCheckpoint] = []
        self.scan = recovered is None
        self._recovered = list(recovered or [])
        # Savepoints taken by this job and the savepoint it started from (id 0: older
        # than anything this job did), by id: restore candidates too (a savepoint
        # commits sink output, so a restore must not go back before it), but never
        # discarded by retention.
        self.restore_points: list[tuple[int, storage.Location]] = (
            [] if initial is None else [(0, initial)]
        )
        self.restore_points.extend(recovered_savepoints or [])

    def recover(self) -> None:
        """Load the recovered checkpoints (blocking: reads their metadata; run it off the loop).

        Each becomes a retained completed checkpoint, so retention counts them and
        does not delete them before ``retained`` newer ones completed. One whose
        metadata cannot be read is kept as a candidate (a restore reports it).
        """
        for directory in self._recovered:
            checkpoint_id = _checkpoint_id(directory)
            timestamp, size = 0, 0
            try:
                meta = metadata.read(directory)
                checkpoint_id, timestamp, size = (
                    meta.checkpoint_id,
                    meta.timestamp,
                    meta.state_size(),
                )
            except metadata.CorruptCheckpointError:
                pass  # select_restore says why, when a restore would need it
            self.completed.append(
                CompletedCheckpoint(checkpoint_id, timestamp, directory, 0.0, size, 0.0)
            )
        self._recovered = []
        self.completed = sorted(self.completed, key=lambda c: c.checkpoint_id)[-self.retained :]

    def add_savepoint(self, savepoint: CompletedCheckpoint) -> None:
        self.restore_points.append((savepoint.checkpoint_id, savepoint.directory))

    def add(self, checkpoint: CompletedCheckpoint) -> None:
        self.completed.append(checkpoint)
        while len(self.completed) > self.retained:
            self.completed.pop(0)
        oldest = self.completed[0].checkpoint_id
        # Shared files (incremental checkpoints) that only discarded checkpoints reference:
        # decided against the retained checkpoints of now, whichever thread discards.
        retained = [c.directory for c in self.completed]
        if storage.is_remote(self.job_dir):
            # Listing and deleting objects is network I/O: off the JobManager's loop.
            threading.Thread(
                target=self._discard_remote,
                args=(oldest, retained, checkpoint.checkpoint_id),
                name="retention",
                daemon=True,
            ).start()
        else:
            self._discard_before(oldest, retained)

    def _discard_remote(
        self, oldest: int, retained: list[storage.Location], completed: int
    ) -> None:
        """:meth:`_discard_before` on object storage, and abort the multipart uploads left
        under ``chk-<id>/`` for every id below ``completed``: such a checkpoint is complete
        or was aborted (a completion subsumes the older pending ones), so an upload still
        in progress there belongs to no one (its TaskManager died, or the task was still
        writing when its checkpoint was aborted).  Runs in its own thread: errors are logged."""
        try:
            self._discard_before(oldest, retained)
            aborted = storage.abort_uploads(self.job_dir, lambda key: _below(key, completed))
        except OSError as e:
            logs.event(log, "retention_failed", logging.WARNING, error=str(e))
            return
        if aborted:
            logs.event(log, "abandoned_uploads_aborted", uploads=aborted, subsumed_by=completed)

    def abort_abandoned_uploads(self) -> None:
        """Abort every multipart upload in progress under the job's directory (blocking).

        For a restore, when no checkpoint is in flight: an upload there was left by a
        TaskManager that died, or by a task of the ended attempt.  Not guaranteed: a
        TaskManager cut off from the JobManager that keeps uploading after this runs
        leaves its upload until the next completed checkpoint (``chk-<id>/``) or the
        next restore (``shared/``).
        """
        aborted = storage.abort_uploads(self.job_dir)
        if aborted:
            logs.event(log, "abandoned_uploads_aborted", uploads=aborted, on="restore")

    def _discard_before(self, oldest: int, retained: list[storage.Location]) -> None:
        discarded = [
            storage.checkpoint_dir(self.job_dir, checkpoint_id)
            for checkpoint_id in storage.checkpoint_ids(self.job_dir)
            if checkpoint_id < oldest
        ]
        # Read every sidecar before deleting anything: a failure leaves all in place.
        unused = shared.unreferenced(
            [shared.references(d) for d in discarded],
            [shared.references(d) for d in retained],
        )
        for directory in discarded:
            storage.discard(directory)
        if unused:
            shared.delete(self.job_dir, unused)

    def latest(self) -> CompletedCheckpoint | None:
        return self.completed[-1] if self.completed else None

    def _candidates(self) -> tuple[list[tuple[int, storage.Location]], list[SkippedCheckpoint]]:
        """Readable restore points (id, directory), and the known-complete ones that are not.

        A scanned ``chk-N`` that this store never saw complete (one in flight at a
        crash) is passed over with a log line only.
        """
        known = {c.directory: c.checkpoint_id for c in self.completed}
        known.update((directory, i) for i, directory in self.restore_points)
        directories = list(known)
        if self.scan:
            scanned = [
                storage.checkpoint_dir(self.job_dir, checkpoint_id)
                for checkpoint_id in storage.checkpoint_ids(self.job_dir)
            ]
            directories = [*scanned, *(d for d in directories if d not in scanned)]
        found: list[tuple[int, storage.Location]] = []
        skipped: list[SkippedCheckpoint] = []
        for directory in directories:
            try:
                found.append((metadata.read(directory).checkpoint_id, directory))
            except metadata.CorruptCheckpointError as e:
                reason = str(e) if storage.is_dir(directory) else f"{directory} is missing"
                checkpoint_id = known.get(directory, _checkpoint_id(directory))
                if directory in known:
                    skipped.append(SkippedCheckpoint(directory, reason, checkpoint_id))
                logs.event(
                    log,
                    "checkpoint_skipped",
                    logging.WARNING,
                    checkpoint_id=checkpoint_id,
                    directory=str(directory),
                    reason=reason,
                    action="trying the previous checkpoint",
                )
        # By id, then by name: a Path and an s3:// location do not compare.
        return sorted(found, key=lambda f: (f[0], str(f[1]))), skipped

    def select_restore(self) -> RestoreSelection:
        """The newest checkpoint or savepoint whose metadata and files are intact.

        ``skipped`` lists the known ones newer than it that could not be used
        (all of them when none can): restoring an older checkpoint than one whose
        commit already happened may repeat that output, so it is always reported.
        """
        candidates, skipped = self._candidates()
        required = bool(self.completed or self.restore_points)
        for checkpoint_id, directory in reversed(candidates):
            try:
                meta = metadata.read(directory)
            except metadata.CorruptCheckpointError as e:
                skipped.append(SkippedCheckpoint(directory, str(e), checkpoint_id))
                logs.event(
                    log,
                    "checkpoint_skipped",
                    logging.WARNING,
                    checkpoint_id=checkpoint_id,
                    reason=str(e),
                    action="trying the previous checkpoint",
                )
                continue
            newer = tuple(k for k in skipped if k.checkpoint_id > meta.checkpoint_id)
            return RestoreSelection((directory, meta), newer, required)
        return RestoreSelection(None, tuple(skipped), required)

    def max_id(self) -> int:
        """The highest checkpoint id seen: new checkpoints continue after it."""
        candidates, _ = self._candidates()
        ids = [checkpoint_id for checkpoint_id, _ in candidates]
        ids.extend(c.checkpoint_id for c in self.completed)
        return max(ids, default=0)


def _checkpoint_id(directory: storage.Location) -> int:
    """The id in a ``chk-<id>`` directory name (0 for a savepoint's directory)."""
    name = directory.name
    return int(name[4:]) if name.startswith("chk-") and name[4:].isdigit() else 0


def _below(key: str, checkpoint_id: int) -> bool:
    """Whether ``key`` (relative to the job directory) is under ``chk-<id>/`` with a lower id."""
    first, _, _ = key.partition("/")
    number = first.removeprefix("chk-")
    return first.startswith("chk-") and number.isdigit() and int(number) < checkpoint_id
