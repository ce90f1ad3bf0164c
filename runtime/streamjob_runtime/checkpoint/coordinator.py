"""CheckpointCoordinator: triggers checkpoints, collects acknowledgements, completes them.

A checkpoint completes when every subtask acknowledged it and its
``_metadata`` is written (last, atomically); only then are the tasks told
(notify-complete, which commits sinks).  Checkpoints that expire, or that a
task declines, fail; more than ``tolerable_failures`` failures in a row fail
the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from streamjob_runtime import config, logs
from streamjob_runtime.checkpoint import metadata, store
from streamjob_runtime.ha import services
from streamjob_runtime.rpc import messages
from streamjob_runtime.state import storage

log = logging.getLogger(__name__)

TaskKey = tuple[str, int]


class CheckpointGateway(Protocol):
    """How the coordinator reaches the tasks of the current attempt."""

    async def trigger(self, pending: PendingCheckpoint) -> None: ...

    async def notify_complete(self, checkpoint_id: int) -> None: ...

    async def abort(self, checkpoint_id: int) -> None: ...


class CheckpointPersistence(Protocol):
    """HA metadata for checkpoints; raises ``FencedError`` once we are not the leader."""

    async def reserve(self, next_checkpoint_id: int) -> None: ...

    async def completed(self, checkpoint: store.CompletedCheckpoint) -> None: ...


@dataclass(frozen=True)
class SubtaskAck:
    """One subtask's acknowledgement, kept for the checkpoint's statistics."""

    vertex_id: str
    subtask: int
    ack_ms: float  # from the trigger to the acknowledgement
    bytes: int
    sync_ms: float
    async_ms: float
    alignment_ms: float
    unaligned: bool = False
    channel_state_bytes: int = 0


@dataclass
class PendingCheckpoint:
    checkpoint_id: int
    timestamp: int
    started: float
    not_yet_acknowledged: set[TaskKey]
    handles: list[messages.StateHandle] = field(default_factory=list)
    bytes: int = 0
    alignment_ms: float = 0.0
    final: bool = False
    kind: str = "checkpoint"  # or "savepoint"
    directory: storage.Location = Path()
    stop: bool = False  # sources emit nothing after this barrier
    drain: bool = False
    # None: aligned; else the checkpoint may go unaligned after that many ms (0: at once)
    aligned_timeout_ms: int | None = None
    failure: str | None = None
    acks: list[SubtaskAck] = field(default_factory=list)
    # Its _metadata is being written and the HA metadata may already point at it: only
    # the completion itself may abort it now (see _abort).
    committing: bool = False
    done: asyncio.Future[store.CompletedCheckpoint | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True)
class CheckpointStats:
    checkpoint_id: int
    status: str  # COMPLETED | FAILED | IN_PROGRESS
    trigger_timestamp: int
    duration_ms: float
    bytes: int
    alignment_ms: float
    failure: str | None = None
    kind: str = "checkpoint"
    acks: tuple[SubtaskAck, ...] = ()

    @property
    def unaligned(self) -> bool:
        return any(a.unaligned for a in self.acks)

    @property
    def channel_state_bytes(self) -> int:
        return sum(a.channel_state_bytes for a in self.acks)


class CheckpointCoordinator:
    def __init__(
        self,
        *,
        job_id: str,
        job_dir: storage.Location,
        cfg: config.CheckpointConfig,
        max_parallelism: int,
        operator_parallelism: dict[str, int],
        completed_store: store.CompletedCheckpointStore,
        next_checkpoint_id: int,
        fail_job: Callable[[str], Awaitable[None]],
        persistence: CheckpointPersistence | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_dir = job_dir
        self.cfg = cfg
        self.max_parallelism = max_parallelism
        self.operator_parallelism = operator_parallelism
        self.store = completed_store
        self.next_id = next_checkpoint_id
        self.fail_job = fail_job
        self.persistence = persistence
        self.pending: dict[int, PendingCheckpoint] = {}
        self.history: deque[CheckpointStats] = deque(maxlen=20)
        self.counts = {"completed": 0, "failed": 0}
        self.consecutive_failures = 0
        self.last_completion = 0.0
        self.gateway: CheckpointGateway | None = None
        self.tasks: set[TaskKey] = set()
        self._periodic: asyncio.Task[None] | None = None
        self._timeouts: set[asyncio.Task[None]] = set()

    # -- attempt lifecycle -----------------------------------------------------------------

    def start(self, gateway: CheckpointGateway, tasks: set[TaskKey]) -> None:
        """All tasks of a new attempt run: start periodic checkpoints (if enabled)."""
        self.gateway = gateway
        self.tasks = tasks
        if self.cfg.enabled and self._periodic is None:
            self._periodic = asyncio.create_task(self._run_periodic())

    async def stop(self, reason: str) -> None:
        """The attempt ended: stop triggering and abort what is in flight."""
        if self._periodic is not None:
            self._periodic.cancel()
            self._periodic = None
        for checkpoint_id in list(self.pending):
            await self._abort(checkpoint_id, reason, counts=False)
        self.gateway = None

    async def _run_periodic(self) -> None:
        interval = self.cfg.interval_ms / 1000
        await asyncio.sleep(interval)
        while True:
            try:
                await self.trigger()
            except Exception:  # a control loop never dies
                log.exception("checkpoint_trigger_error")
            await asyncio.sleep(self._next_delay(interval))

    def _next_delay(self, interval: float) -> float:
        pause = self.cfg.min_pause_ms / 1000
        since = time.monotonic() - self.last_completion
        return max(interval, pause - since, 0.01) if pause else interval

    # -- triggering ----------------------------------------------------------------------

    async def trigger(
        self,
        final: bool = False,
        savepoint_dir: storage.Location | None = None,
        stop: bool = False,
        drain: bool = False,
    ) -> PendingCheckpoint | None:
        """Start a checkpoint, or a savepoint into ``savepoint_dir``.

        Periodic checkpoints respect max concurrent and min pause; final
        checkpoints and savepoints do not.  Returns None when nothing started.
        """
        gateway = self.gateway
        if gateway is None:
            return None
        if not final and savepoint_dir is None:
            if len(self.pending) >= self.cfg.max_concurrent:
                return None
            if (time.monotonic() - self.last_completion) * 1000 < self.cfg.min_pause_ms:
                return None
        checkpoint_id = self.next_id
        self.next_id += 1
        if self.persistence is not None:
            try:
                await self.persistence.reserve(self.next_id)
            except services.FencedError:
                return None  # no longer the leader: trigger nothing
            if self.gateway is not gateway:
                return None  # the attempt ended while we wrote
        pending = PendingCheckpoint(
            checkpoint_id,
            logs.now_ms(),
            time.monotonic(),
            set(self.tasks),
            final=final,
            kind="checkpoint" if savepoint_dir is None else "savepoint",
            directory=savepoint_dir or storage.checkpoint_dir(self.job_dir, checkpoint_id),
            stop=stop,
            drain=drain,
            # The final checkpoint (all input ended, nothing in flight) and savepoints
            # are aligned.
            aligned_timeout_ms=self.cfg.alignment_timeout_ms(final or savepoint_dir is not None),
        )
        self.pending[checkpoint_id] = pending
        timeout = asyncio.create_task(self._expire(checkpoint_id))
        self._timeouts.add(timeout)
        timeout.add_done_callback(self._timeouts.discard)
        if pending.kind == "savepoint":
            logs.event(
                log,
                "savepoint_triggered",
                job_id=self.job_id,
                checkpoint_id=checkpoint_id,
                directory=str(pending.directory),
                stop=stop,
                drain=drain,
            )
        await gateway.trigger(pending)
        return pending

    async def _expire(self, checkpoint_id: int) -> None:
        await asyncio.sleep(self.cfg.timeout_ms / 1000)
        if checkpoint_id in self.pending:
            await self._abort(
                checkpoint_id, f"expired after {self.cfg.timeout_ms} ms before all tasks acked"
            )

    # -- acknowledgements ------------------------------------------------------------------

    async def receive_acknowledge(self, ack: messages.AcknowledgeCheckpoint) -> None:
        pending = self.pending.get(ack.checkpoint_id)
        if pending is None:
            return  # late ack of an aborted checkpoint
        pending.not_yet_acknowledged.discard((ack.vertex_id, ack.subtask))
        pending.acks.append(
            SubtaskAck(
                ack.vertex_id,
                ack.subtask,
                (time.monotonic() - pending.started) * 1000,
                ack.bytes,
                ack.sync_ms,
                ack.async_ms,
                ack.alignment_ms,
                ack.unaligned,
                ack.channel_state_bytes,
            )
        )
        pending.handles.extend(ack.handles)
        pending.bytes += ack.bytes
        pending.alignment_ms = max(pending.alignment_ms, ack.alignment_ms)
        if not pending.not_yet_acknowledged:
            await self._complete(pending)

    async def receive_decline(self, decline: messages.DeclineCheckpoint) -> None:
        if decline.checkpoint_id in self.pending:
            await self._abort(
                decline.checkpoint_id,
                f"declined by {decline.vertex_id}[{decline.subtask}]: {decline.reason}",
            )

    async def _complete(self, pending: PendingCheckpoint) -> None:
        directory = pending.directory
        pending.committing = True
        operators: dict[str, list[messages.StateHandle]] = {}
        for h in pending.handles:
            operators.setdefault(h.uid, []).append(h)
        meta = metadata.CheckpointMetadata(
            version=metadata.FORMAT_VERSION,
            job_id=self.job_id,
            checkpoint_id=pending.checkpoint_id,
            timestamp=pending.timestamp,
            kind=pending.kind,
            operators={
                uid: metadata.OperatorState(p, self.max_parallelism, operators.get(uid, []))
                for uid, p in self.operator_parallelism.items()
            },
        )
        try:
            await asyncio.to_thread(metadata.write, directory, meta)
        except OSError as e:
            await self._abort(
                pending.checkpoint_id, f"writing {directory}/_metadata failed: {e}", force=True
            )
            return
        duration_ms = (time.monotonic() - pending.started) * 1000
        completed = store.CompletedCheckpoint(
            pending.checkpoint_id,
            pending.timestamp,
            directory,
            duration_ms,
            pending.bytes,
            pending.alignment_ms,
            pending.kind,
        )
        if self.persistence is not None:
            # Complete only once the HA metadata points at it: a deposed leader's
            # write is fenced, so its checkpoint never completes and no task commits.
            try:
                await self.persistence.completed(completed)
            except services.FencedError as e:
                # A write whose answer never came may have landed: the next leader may
                # restore this checkpoint, so its files stay (at worst unreferenced).
                await self._abort(
                    pending.checkpoint_id,
                    f"not the leader any more: {e}",
                    False,
                    force=True,
                    discard=not isinstance(e, services.WriteOutcomeUnknown),
                )
                return
        # Never aborted meanwhile (a committing checkpoint is the completion's to abort):
        # the HA metadata points at it now, so its files must stay.
        self.pending.pop(pending.checkpoint_id, None)
        if pending.kind == "savepoint":
            self.store.add_savepoint(completed)
        else:
            self.store.add(completed)
        self.counts["completed"] += 1
        self.consecutive_failures = 0
        self.last_completion = time.monotonic()
        self.history.append(
            CheckpointStats(
                pending.checkpoint_id,
                "COMPLETED",
                pending.timestamp,
                duration_ms,
                pending.bytes,
                pending.alignment_ms,
                kind=pending.kind,
                acks=tuple(pending.acks),
            )
        )
        logs.event(
            log,
            f"{pending.kind}_completed",
            job_id=self.job_id,
            checkpoint_id=pending.checkpoint_id,
            duration_ms=round(duration_ms, 1),
            bytes=pending.bytes,
            alignment_ms=round(pending.alignment_ms, 1),
            unaligned=any(a.unaligned for a in pending.acks),
            channel_state_bytes=sum(a.channel_state_bytes for a in pending.acks),
            final=pending.final,
            directory=str(directory),
        )
        # Older pending checkpoints are subsumed by this one (savepoints never are).
        for older in [
            cid
            for cid, p in self.pending.items()
            if cid < pending.checkpoint_id and p.kind == "checkpoint"
        ]:
            await self._abort(
                older, f"subsumed by checkpoint {pending.checkpoint_id}", counts=False
            )
        # Tasks hear of the completion before anyone waiting on it acts (e.g. cancels).
        if self.gateway is not None and not pending.final:
            await self.gateway.notify_complete(pending.checkpoint_id)
        pending.done.set_result(completed)

    async def _abort(
        self,
        checkpoint_id: int,
        reason: str,
        counts: bool = True,
        force: bool = False,
        discard: bool = True,
    ) -> None:
        """Abort a pending checkpoint and discard its files (unless ``discard`` is
        False). One whose completion is writing its metadata is left to that completion
        (``force`` is the completion's own abort): once the HA metadata names it,
        deleting its files would leave a new leader pointing at nothing."""
        pending = self.pending.get(checkpoint_id)
        if pending is None:
            return
        if pending.committing and not force:
            logs.event(
                log,
                "checkpoint_abort_deferred",
                job_id=self.job_id,
                checkpoint_id=checkpoint_id,
                reason=reason,
            )
            return
        del self.pending[checkpoint_id]
        pending.failure = reason
        if discard:
            storage.discard_later(pending.directory)
        self.history.append(
            CheckpointStats(
                checkpoint_id,
                "FAILED",
                pending.timestamp,
                (time.monotonic() - pending.started) * 1000,
                pending.bytes,
                pending.alignment_ms,
                reason,
                kind=pending.kind,
                acks=tuple(pending.acks),
            )
        )
        if not pending.done.done():
            pending.done.set_result(None)
        logs.event(
            log,
            f"{pending.kind}_failed",
            logging.WARNING,
            job_id=self.job_id,
            checkpoint_id=checkpoint_id,
            reason=reason,
        )
        if self.gateway is not None:
            await self.gateway.abort(checkpoint_id)
        if not counts or pending.kind == "savepoint":
            return  # as in Flink, only failed checkpoints count against the tolerance
        self.counts["failed"] += 1
        self.consecutive_failures += 1
        if self.consecutive_failures > self.cfg.tolerable_failures:
            self.consecutive_failures = 0
            await self.fail_job(
                f"checkpoint {checkpoint_id} failed ({reason}) and the tolerable failed"
                f" checkpoint count ({self.cfg.tolerable_failures}) is exceeded"
            )

    def abandon(self) -> None:
        """Leadership is gone: forget everything in flight, tell no one."""
        if self._periodic is not None:
            self._periodic.cancel()
            self._periodic = None
        for timeout in list(self._timeouts):
            timeout.cancel()
        self.gateway = None
        for pending in self.pending.values():
            pending.failure = "the JobManager lost leadership"
            if not pending.done.done():
                pending.done.set_result(None)
        self.pending.clear()

    def in_progress(self) -> int:
        return len(self.pending)
