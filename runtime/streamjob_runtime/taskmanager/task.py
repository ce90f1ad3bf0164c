"""A subtask: one parallel instance of a chained JobVertex.

The task loop reads an element, runs it through the chain, then flushes the
outputs (where back-pressure applies).  Checkpoints follow Flink's barrier
protocol: sources take their snapshot when triggered and emit a barrier; other
tasks align barriers across input channels (exactly-once: a channel that
delivered the barrier is blocked until all have; at-least-once: nothing is
blocked), snapshot, and forward the barrier.  A snapshot is serialised
synchronously and written to checkpoint storage asynchronously.

Unaligned checkpoints (``execution.checkpointing.unaligned``): the barrier that
overtakes all in-flight data is the trigger message, which the JobManager sends
to every task.  A task snapshots when it gets it (or at the checkpoint's first
barrier, whichever comes first), forwards the barrier, and keeps processing; each
input channel records what arrives until that channel's barrier does (the
channel state, :mod:`channelstate`), taking data beyond its capacity meanwhile so
the barrier is never stuck behind back-pressured records.  The records an
upstream had queued in its outputs when it forwarded its barrier are thus stored
by the downstream task, as its channel state.  With an aligned-checkpoint timeout
the task aligns first and switches to unaligned once the timeout has passed since
the trigger: the channels whose barrier came have no channel state.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import pickle
import shutil
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamjob_runtime import config, logs
from streamjob_runtime.graph import jobgraph, keygroups
from streamjob_runtime.operators import base, source
from streamjob_runtime.rpc import messages
from streamjob_runtime.state import heap, rocksdb, serialization, shared, storage
from streamjob_runtime.taskmanager import channelstate, network, offload, wire

log = logging.getLogger(__name__)

Report = Callable[[messages.Message], Awaitable[None]]

# Operator time after which an input task lets the TaskManager's other work run.
YIELD_AFTER_BUSY_S = 0.005


class TaskCanceled(Exception):
    pass


@dataclass
class ChannelCapture:
    """An unaligned checkpoint of this task whose channel state is still being recorded."""

    checkpoint_id: int
    waiting: set[int]  # channels whose barrier has not arrived
    channels: dict[int, list[bytes]] = field(default_factory=dict)
    failure: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finish(self, failure: str | None = None) -> None:
        self.failure = self.failure or failure
        self.done.set()


def _state_bytes(uid: str, snapshot: base.OperatorSnapshot) -> bytes:
    try:
        # Memo-less: half the CPU of the synchronous snapshot (see state.serialization).
        return serialization.dumps((snapshot.keyed, snapshot.operator))
    except Exception as e:
        where = ""
        for name, table in snapshot.keyed.items():
            for key, value in table.items():
                try:
                    pickle.dumps(value, protocol=5)
                except Exception:
                    where = f" (state {name!r}, key {key!r}, value of type {type(value).__name__})"
                    break
            if where:
                break
        raise base.UnrecoverableError(
            f"state of operator {uid!r} cannot be checkpointed{where}: {type(e).__name__}: {e};"
            " keep only picklable values (numbers, strings, tuples, lists, dicts, dataclasses)"
            " in state"
        ) from None


def restored_files(
    restore: messages.RestoreSpec, uid: str, ctx: base.OperatorContext
) -> list[tuple[messages.StateHandle, bool]]:
    """The state files subtask ``ctx`` of operator ``uid`` reads, each with whether it
    wants their keyed part: the former subtasks whose key groups overlap ours, and all
    that hold operator state."""
    entry = restore.operators.get(uid)
    if entry is None:
        return []
    mine = ctx.key_group_range
    wanted = []
    for h in sorted(entry[1], key=lambda h: h.subtask):
        theirs = keygroups.KeyGroupRange(h.key_group_start, h.key_group_end)
        wants_keyed = h.has_keyed and mine.intersects(theirs)
        if wants_keyed or h.has_operator:
            wanted.append((h, wants_keyed))
    return wanted


def load_restored_state(
    restore: messages.RestoreSpec,
    uid: str,
    ctx: base.OperatorContext,
    prefetched: Prefetched | None = None,
    shared_dir: Path | None = None,
) -> base.RestoredState | None:
    """Read the state of operator ``uid`` that belongs to subtask ``ctx``.

    Keyed state is read from the former subtasks whose key groups overlap ours
    and filtered to our key groups; operator lists are read from all.  Files in
    ``prefetched`` are not read (or decoded) again.  ``shared_dir`` is a local job
    directory holding the shared files of incremental state, downloaded from
    object storage (None: they are read where the checkpoint is).
    """
    entry = restore.operators.get(uid)
    if entry is None:
        return None
    former_parallelism = entry[0]
    mine = ctx.key_group_range
    keyed: dict[str, dict[Any, Any]] = {}
    operator: list[list[Any]] = [[] for _ in range(former_parallelism)]
    incremental: list[tuple[Any, Path]] = []
    for h, wants_keyed in restored_files(restore, uid, ctx):
        theirs = keygroups.KeyGroupRange(h.key_group_start, h.key_group_end)
        pair = prefetched.decoded.get(h.file) if prefetched is not None else None
        if pair is None:
            data = prefetched.blobs.get(h.file) if prefetched is not None else None
            if data is None:
                data = storage.read_bytes(storage.location(restore.directory, ctx.s3) / h.file)
            pair = pickle.loads(data)
        keyed_part, operator_part = pair
        operator[h.subtask] = operator_part
        if not wants_keyed:
            continue
        if isinstance(keyed_part, heap.IncrementalHeapState):
            # Whole tables, some in the job directory's shared files: filtered below.
            keyed_part = keyed_part.read(shared_dir or Path(restore.directory).parent)
        elif isinstance(keyed_part, rocksdb.IncrementalKeyedState):
            # Read by the operator, which scans just its key groups; shared files live in
            # the checkpoint's job directory (also another job's).
            job_dir = shared_dir or Path(restore.directory).parent
            incremental.append((keyed_part, job_dir))
            continue
        exact = theirs == mine
        maxp = ctx.max_parallelism
        for name, table in keyed_part.items():
            target = keyed.setdefault(name, {})
            if exact:
                target.update(table)
            else:
                target.update(
                    (k, v) for k, v in table.items() if mine.contains(keygroups.key_group(k, maxp))
                )
    return base.RestoredState(
        restore.checkpoint_id, restore.job_id, keyed, operator, former_parallelism, incremental
    )


@dataclass
class Prefetched:
    """State files a task downloaded before restoring, by file name: ``blobs`` as read,
    and ``decoded`` the (keyed, operator) pairs already unpickled to find the shared
    files of incremental state (not unpickled again)."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    decoded: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class Task:
    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        vertex: jobgraph.JobVertex,
        subtask: int,
        job_config: config.JobConfig,
        gate: network.InputGate | None,
        writers: list[network.RecordWriter],
        checkpoint_dir: str,
        restore: messages.RestoreSpec | None,
        report: Report,
        inputs: list[channelstate.InputEdge] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.vertex = vertex
        self.subtask = subtask
        self.config = job_config
        self.gate = gate
        self.output = network.MultiOutput(writers)
        self.checkpoint_dir = checkpoint_dir
        self.restore = restore
        self.report = report
        self.inputs = inputs or []  # the gate's channels by input edge
        self.exactly_once = job_config.checkpointing.mode is config.CheckpointingMode.EXACTLY_ONCE
        self.records_in = 0
        self.busy_s = 0.0  # time in the operators, for the busy-time metric
        self.input_ended = False
        self._triggers: list[messages.TriggerCheckpoint] = []
        self._stopped = False  # after a stop-with-savepoint barrier: emit nothing more
        self._wakeup = asyncio.Event()
        self._uploads: set[asyncio.Task[None]] = set()
        self._shared_dir: Path | None = None  # shared files downloaded for a restore
        # alignment
        self._aligning: int | None = None
        # Highest checkpoint id this task aborted, aligned or saw complete: a barrier at or
        # below it is late (Flink's lastCancelledOrCompletedCheckpointId) and is ignored.
        self._last_done = 0
        self._barriers: set[int] = set()
        self._align_started = 0.0
        self._ended_channels: set[int] = set()
        self._watermarks: list[int] = []  # per channel: its last watermark below the end
        self._at_max: set[int] = set()  # channels that sent the end-of-input watermark
        self._watermark = base.MIN_WATERMARK
        # unaligned checkpoints
        self._capture: ChannelCapture | None = None
        self._alignment_timeouts: list[int] = []  # checkpoints whose aligned phase is over
        self._timeout_timers: dict[int, asyncio.TimerHandle] = {}
        self._trigger_timestamps: dict[int, int] = {}
        if gate is not None:
            gate.on_captured = self._channel_captured
        self._build_chain()

    # -- setup ---------------------------------------------------------------------------

    def _build_chain(self) -> None:
        # A deep copy gives each subtask its own user objects, as Flink's deserialisation does.
        ops = [copy.deepcopy(t.factory()) for t in self.vertex.operators]
        self.head = ops[0]
        self.operators: list[base.StreamOperator] = ops
        self.uids = [t.uid for t in self.vertex.operators]
        outputs: list[base.Output] = [network.ChainOutput(op) for op in ops[1:]]
        outputs.append(self.output)
        for op, out, uid in zip(ops, outputs, self.uids, strict=True):
            op.setup(self.context(uid), out)
        self.is_source = isinstance(self.head, source.SourceOperator)

    def context(self, uid: str) -> base.OperatorContext:
        return base.OperatorContext(
            uid=uid,
            subtask_index=self.subtask,
            parallelism=self.vertex.parallelism,
            max_parallelism=self.config.max_parallelism,
            attempt=self.attempt,
            job_id=self.job_id,
            state_backend=self.config.state_backend,
            s3=self.config.s3,
        )

    async def _prefetch(self) -> Prefetched:
        """Download this task's state files from object storage, in parallel, off the loop.

        A local restore reads its files in :meth:`_initialize` (the page cache, fast);
        a download must not hold the TaskManager's loop (heartbeats, other tasks).
        The shared files of incremental state go to a local directory,
        :attr:`_shared_dir`, deleted once the operators restored from it.
        """
        restore = self.restore
        if restore is None or not storage.is_remote(storage.location(restore.directory)):
            return Prefetched()
        directory = storage.location(restore.directory, self.config.s3)
        names = sorted(
            {
                h.file
                for op, uid in zip(self.operators, self.uids, strict=True)
                for h, _ in restored_files(restore, uid, op.ctx)
            }
            | {h.file for h in self._channel_state_handles()}
        )
        blobs = await asyncio.gather(
            *(offload.to_thread(storage.read_bytes, directory / name) for name in names)
        )
        prefetched = Prefetched(dict(zip(names, blobs, strict=True)))
        # The class name opens a pickled incremental state: full states are not unpickled
        # here (a restore filters them by key group as it decodes them).
        incremental = (rocksdb.IncrementalKeyedState, heap.IncrementalHeapState)
        for name, blob in prefetched.blobs.items():
            head = blob[:512]
            if b"IncrementalKeyedState" in head or b"IncrementalHeapState" in head:
                pair = pickle.loads(blob)
                if isinstance(pair[0], incremental):
                    prefetched.decoded[name] = pair
        needed = {
            name for keyed, _ in prefetched.decoded.values() for name in keyed.shared.values()
        }
        if needed:
            local_dir = self.config.state_backend.local_dir
            if local_dir is not None:
                os.makedirs(local_dir, exist_ok=True)  # a fresh machine has none yet
            self._shared_dir = Path(tempfile.mkdtemp(prefix="streamjob-shared-", dir=local_dir))
            await offload.to_thread(shared.fetch, directory.parent, needed, self._shared_dir)
        return prefetched

    def _initialize(self, prefetched: Prefetched | None = None) -> None:
        try:
            for op, uid in zip(self.operators, self.uids, strict=True):
                restored = None
                if self.restore is not None:
                    restored = load_restored_state(
                        self.restore, uid, op.ctx, prefetched, self._shared_dir
                    )
                op.initialize_state(restored)
                op.open()
        finally:
            if self._shared_dir is not None:
                shutil.rmtree(self._shared_dir, ignore_errors=True)
                self._shared_dir = None
        self._replay_channel_state(prefetched)

    def _channel_state_handles(self) -> list[messages.StateHandle]:
        if self.restore is None or self.gate is None:
            return []
        return channelstate.handles_to_read(
            self.restore, self.uids[0], self.subtask, self.vertex.parallelism
        )

    def _replay_channel_state(self, prefetched: Prefetched | None) -> None:
        """Put the restored in-flight data in front of the input channels' queues.

        Network data may already be queued (upstream tasks start at once); the
        restored data precedes it, as it preceded the upstream's barrier.
        """
        handles = self._channel_state_handles()
        if not handles:
            return
        restore, gate = self.restore, self.gate
        assert restore is not None
        assert gate is not None
        stored = []
        for h in handles:
            data = prefetched.blobs.get(h.file) if prefetched is not None else None
            if data is None:
                data = storage.read_bytes(
                    storage.location(restore.directory, self.config.s3) / h.file
                )
            stored.append((h.subtask, channelstate.decode(data)))
        try:
            per_channel = channelstate.redistribute(
                stored,
                self.inputs,
                self.subtask,
                self.vertex.parallelism,
                restore.operators[self.uids[0]][0],
                self.config.max_parallelism,
            )
        except channelstate.ChannelStateError as e:
            raise base.UnrecoverableError(str(e)) from None
        replayed = 0
        for channel, elements in per_channel.items():
            gate.channels[channel].queue.extendleft(reversed(elements))
            replayed += sum(len(e[1]) for e in elements if e[0] == "b")
        gate.available.set()
        logs.event(
            log,
            "channel_state_restored",
            task=self.name,
            checkpoint_id=restore.checkpoint_id,
            records=replayed,
        )

    @property
    def name(self) -> str:
        return f"{self.vertex.id}[{self.subtask}]"

    # -- control from the TaskManager ----------------------------------------------------

    def trigger_checkpoint(self, trigger: messages.TriggerCheckpoint) -> None:
        """Sources: take a checkpoint (emit its barrier).  Other tasks get this only for
        a checkpoint that may go unaligned: it is the barrier that overtook the data."""
        self._triggers.append(trigger)
        self._wakeup.set()
        if self.gate is not None:
            self.gate.interrupt()

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self._last_done = max(self._last_done, checkpoint_id)
        for op in self.operators:
            op.notify_checkpoint_complete(checkpoint_id)

    def abort_checkpoint(self, checkpoint_id: int) -> None:
        """Give up checkpoint ``checkpoint_id``: end its alignment, ignore its later barriers.

        The abort may arrive before any of its barriers (they are still in flight
        upstream); those barriers must not start an alignment that no later barrier
        of the same checkpoint would complete.
        """
        self._last_done = max(self._last_done, checkpoint_id)
        if self._aligning == checkpoint_id:
            self._end_alignment()
        capture = self._capture
        if capture is not None and capture.checkpoint_id <= checkpoint_id:
            self._drop_capture(f"checkpoint {checkpoint_id} was aborted")
        self._trigger_timestamps.pop(checkpoint_id, None)
        timer = self._timeout_timers.pop(checkpoint_id, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        for timer in self._timeout_timers.values():
            timer.cancel()
        for op in self.operators:
            with contextlib.suppress(Exception):
                op.close()
        for w in self.output.writers:
            w.close()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self._initialize(await self._prefetch())
            await self._report_state("RUNNING")
            if self.is_source:
                await self._run_source()
            else:
                await self._run_input()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            cause = "".join(traceback.format_exception(e)[-6:])
            logs.event(
                log,
                "task_failed",
                logging.ERROR,
                task=self.name,
                attempt=self.attempt,
                cause=f"{type(e).__name__}: {e}",
            )
            await self._report_state(
                "FAILED",
                cause=f"{self.name}: {type(e).__name__}: {e}\n{cause}",
                unrecoverable=isinstance(e, base.UnrecoverableError),
            )

    async def _report_state(
        self, state: str, cause: str | None = None, unrecoverable: bool = False
    ) -> None:
        await self.report(
            messages.TaskStateChanged(
                self.job_id, self.attempt, self.vertex.id, self.subtask, state, cause, unrecoverable
            )
        )

    async def _run_source(self) -> None:
        head = self.head
        assert isinstance(head, source.SourceOperator)
        # A hash-partitioned output splits each batch over its n channels: read n
        # batches' worth, so each channel still gets batches of about batch_size records
        # (at parallelism 2, half-size batches cost ~10 % more CPU per record downstream).
        batch_size = self.config.batch_size * self.output.hash_fanout()
        while True:
            while self._triggers:
                trigger = self._triggers.pop(0)
                if trigger.stop and trigger.drain and not self.input_ended:
                    # Drain: event time jumps to the end, so every window fires before
                    # the savepoint barrier and its results are in the savepoint's commit.
                    head.output.emit_watermark(base.MAX_WATERMARK)
                self._checkpoint(
                    trigger.checkpoint_id,
                    trigger.timestamp,
                    0.0,
                    trigger.target,
                    trigger.aligned_timeout_ms,
                )
                if trigger.stop:
                    self._stopped = True
            backoff: float | None = 0.0
            if self.input_ended or self._stopped:
                backoff = None  # only barriers are left to emit: sleep until a trigger
            else:
                started = time.perf_counter()
                emitted = head.emit_next(batch_size)
                self.busy_s += time.perf_counter() - started
                if emitted is None:
                    await self._end_of_input()
                elif emitted:
                    self.records_in += emitted
                else:
                    backoff = head.reader.backoff_s()
            await self.output.flush()
            if backoff == 0.0:
                await asyncio.sleep(0)  # let control messages and other tasks run
            else:
                await self._sleep(backoff)

    async def _sleep(self, seconds: float | None) -> None:
        self._wakeup.clear()
        if self._triggers:
            return
        if seconds is None:
            await self._wakeup.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):  # not wait_for: see network.InputGate.next
                    await self._wakeup.wait()

    async def _end_of_input(self) -> None:
        """Bounded input is exhausted: flush event time, end each operator, tell downstream.

        The task stays up afterwards: barriers still pass through it until the
        final checkpoint completes and the JobManager finishes the job.
        """
        self.input_ended = True
        if self.is_source:
            self.head.output.emit_watermark(base.MAX_WATERMARK)
        for op in self.operators:
            op.end_input()
        self.output.broadcast(("e",))
        await self._report_state("INPUT_ENDED")

    async def _run_input(self) -> None:
        gate = self.gate
        assert gate is not None
        self._watermarks = [base.MIN_WATERMARK] * len(gate.channels)
        timers = any(
            type(op).on_processing_time is not base.StreamOperator.on_processing_time
            for op in self.operators
        )
        busy_at_yield = 0.0
        while True:
            if self._triggers or self._alignment_timeouts:
                self._on_control()
            if self.busy_s - busy_at_yield > YIELD_AFTER_BUSY_S:
                # With input queued and room in its outputs no await here suspends: the
                # task would hold the TaskManager's loop, and its network readers, other
                # tasks and control messages (checkpoint triggers, heartbeats) would wait
                # until its queues ran dry.
                busy_at_yield = self.busy_s
                await asyncio.sleep(0)
            item = await gate.next(0.1 if timers else None)
            if item is not None:
                channel, element = item
                kind = element[0]
                if kind == "b":
                    self._process_batch(element[1], element[2], time.perf_counter())
                elif kind == "s":  # a batch as it came over the network: decoding is work too
                    started = time.perf_counter()
                    values, timestamps = wire.decode_batch(element[1])
                    self._process_batch(values, timestamps, started)
                elif kind == "w":
                    self._on_watermark(channel, element[1])
                elif kind == "c":
                    self._on_barrier(
                        channel,
                        element[1],
                        element[2],
                        element[3],
                        element[4] if len(element) > 4 else None,
                    )
                elif kind == "e":
                    self._ended_channels.add(channel)
                    self._advance_watermark()  # an ended channel no longer holds event time
                    if len(self._ended_channels) == len(gate.channels):
                        await self._end_of_input()
            if timers:
                now = int(time.time() * 1000)
                for op in self.operators:
                    op.on_processing_time(now)
            await self.output.flush()

    def _process_batch(
        self, values: list[Any], timestamps: list[int] | None, started: float
    ) -> None:
        """Process a batch of input records; the task was busy with it since ``started``."""
        self.records_in += len(values)
        self.head.process_batch(values, timestamps)
        self.busy_s += time.perf_counter() - started

    def _on_watermark(self, channel: int, watermark: int) -> None:
        """Watermark ``watermark`` arrived on ``channel``: advance the task's event time.

        The task's watermark is the minimum over its channels, except that the
        end-of-input watermark (``MAX_WATERMARK``) counts only once its channel
        has ended (``"e"``) or every channel has sent it.  A channel that sent
        it without ending was drained (``stop --drain``): its upstream stopped
        mid-stream and a restored job resumes it from the savepoint.  Letting
        the other channels drive event time meanwhile would fire windows, and
        save a watermark, ahead of that channel's position; after the restore
        its on-time records would be dropped as late.
        """
        wms = self._watermarks
        if watermark > wms[channel]:
            if watermark >= base.MAX_WATERMARK:
                self._at_max.add(channel)
            else:
                wms[channel] = watermark
            self._advance_watermark()

    def _advance_watermark(self) -> None:
        wms = self._watermarks
        if not wms:
            return
        at_max, ended = self._at_max, self._ended_channels
        if len(at_max) == len(wms):
            low = base.MAX_WATERMARK
        else:
            low = min(
                base.MAX_WATERMARK if c in ended and c in at_max else w for c, w in enumerate(wms)
            )
        if low > self._watermark:
            self._watermark = low
            self.head.process_watermark(low)

    def _on_barrier(
        self,
        channel: int,
        checkpoint_id: int,
        timestamp: int,
        target: str | None,
        aligned_timeout_ms: int | None = None,
    ) -> None:
        gate = self.gate
        assert gate is not None
        aligning = self._aligning
        if (aligning is not None and checkpoint_id < aligning) or (
            checkpoint_id != aligning and checkpoint_id <= self._last_done
        ):
            logs.event(
                log, "barrier_ignored", logging.DEBUG, task=self.name, checkpoint_id=checkpoint_id
            )
            return  # a late barrier of a checkpoint already aborted, superseded or taken
        if self._aligning is None or checkpoint_id > self._aligning:
            if self._aligning is not None:
                logs.event(
                    log,
                    "alignment_superseded",
                    task=self.name,
                    checkpoint_id=self._aligning,
                    by=checkpoint_id,
                )
                self._last_done = max(self._last_done, self._aligning)
                self._end_alignment()
            self._aligning = checkpoint_id
            self._align_started = time.monotonic()
        self._barriers.add(channel)
        logs.event(
            log,
            "barrier_received",
            logging.DEBUG,
            task=self.name,
            checkpoint_id=checkpoint_id,
            channel=channel,
            have=len(self._barriers),
        )
        if self.exactly_once:
            gate.blocked.add(channel)
        if len(self._barriers) == len(gate.channels):
            alignment_s = time.monotonic() - self._align_started
            self._last_done = max(self._last_done, checkpoint_id)
            self._end_alignment()
            self._checkpoint(checkpoint_id, timestamp, alignment_s, target, aligned_timeout_ms)
        elif aligned_timeout_ms == 0:
            # Its trigger message is late (or lost): this barrier overtakes the rest.
            self._start_unaligned(checkpoint_id, timestamp)
        elif aligned_timeout_ms is not None:
            self._schedule_alignment_timeout(checkpoint_id, timestamp, aligned_timeout_ms)

    # -- unaligned checkpoints -------------------------------------------------------------

    def _on_control(self) -> None:
        """Triggers of checkpoints that may go unaligned, and ended aligned phases."""
        while self._triggers:
            t = self._triggers.pop(0)
            if t.aligned_timeout_ms is None or t.checkpoint_id <= self._last_done:
                continue
            if self._aligning is not None and self._aligning > t.checkpoint_id:
                continue
            if t.aligned_timeout_ms == 0:
                self._start_unaligned(t.checkpoint_id, t.timestamp)
            else:
                self._schedule_alignment_timeout(t.checkpoint_id, t.timestamp, t.aligned_timeout_ms)
        while self._alignment_timeouts:
            checkpoint_id = self._alignment_timeouts.pop(0)
            timestamp = self._trigger_timestamps.pop(checkpoint_id, None)
            if checkpoint_id <= self._last_done or timestamp is None:
                continue  # aligned (or aborted) in time
            if self._aligning is not None and self._aligning != checkpoint_id:
                continue
            logs.event(log, "alignment_timed_out", task=self.name, checkpoint_id=checkpoint_id)
            self._start_unaligned(checkpoint_id, timestamp)

    def _schedule_alignment_timeout(
        self, checkpoint_id: int, timestamp: int, aligned_timeout_ms: int
    ) -> None:
        if checkpoint_id in self._timeout_timers:
            return
        # Measured from the trigger, as Flink's aligned-checkpoint-timeout.
        delay = max(0.0, (timestamp + aligned_timeout_ms - logs.now_ms()) / 1000)
        self._trigger_timestamps[checkpoint_id] = timestamp

        def fire() -> None:
            self._timeout_timers.pop(checkpoint_id, None)
            self._alignment_timeouts.append(checkpoint_id)
            if self.gate is not None:
                self.gate.interrupt()

        self._timeout_timers[checkpoint_id] = asyncio.get_running_loop().call_later(delay, fire)

    def _start_unaligned(self, checkpoint_id: int, timestamp: int) -> None:
        """Snapshot now, forward the barrier, record each channel's in-flight data.

        Valid at any point before the task processed a record that followed the
        checkpoint's barrier on its channel: in an alignment the channels whose
        barrier came are blocked (their channel state is empty); every other
        channel records from its queue's head to its barrier.
        """
        gate = self.gate
        assert gate is not None
        if self._capture is not None:
            self._drop_capture(f"superseded by checkpoint {checkpoint_id}")
        alignment_s = 0.0
        arrived: set[int] = set()
        if self._aligning is not None:
            if self._aligning == checkpoint_id:
                arrived = set(self._barriers)
                alignment_s = time.monotonic() - self._align_started
            else:  # an older alignment: superseded
                self._last_done = max(self._last_done, self._aligning)
            self._end_alignment()
        self._last_done = max(self._last_done, checkpoint_id)
        self._trigger_timestamps.pop(checkpoint_id, None)
        timer = self._timeout_timers.pop(checkpoint_id, None)
        if timer is not None:
            timer.cancel()
        capture = ChannelCapture(checkpoint_id, set())
        for ch in gate.channels:
            if ch.index in arrived:
                continue
            got = ch.start_capture(checkpoint_id)
            if got is None:
                capture.waiting.add(ch.index)
                continue
            capture.channels[ch.index] = got[0]
            if not got[1]:
                capture.failure = f"channel {ch.index} skipped checkpoint {checkpoint_id}"
        if not capture.waiting:
            capture.finish()
        else:
            self._capture = capture
        logs.event(
            log,
            "unaligned_checkpoint_started",
            logging.DEBUG,
            task=self.name,
            checkpoint_id=checkpoint_id,
            waiting=len(capture.waiting),
        )
        self._checkpoint(checkpoint_id, timestamp, alignment_s, None, 0, capture)

    def _channel_captured(
        self, channel: int, checkpoint_id: int, data: list[bytes], complete: bool
    ) -> None:
        capture = self._capture
        if capture is None or capture.checkpoint_id != checkpoint_id:
            return
        capture.channels[channel] = data
        capture.waiting.discard(channel)
        if not complete:
            capture.failure = f"channel {channel} skipped checkpoint {checkpoint_id}"
        if not capture.waiting:
            self._capture = None
            capture.finish()

    def _drop_capture(self, reason: str) -> None:
        capture = self._capture
        assert capture is not None
        self._capture = None
        if self.gate is not None:
            for ch in self.gate.channels:
                if ch.capture is not None and ch.capture_id == capture.checkpoint_id:
                    ch.stop_capture()
        # The upload waiting for it declines (a decline of an aborted checkpoint is moot).
        capture.finish(reason)
        capture.channels.clear()

    def _end_alignment(self) -> None:
        self._aligning = None
        self._barriers.clear()
        if self.gate is not None:
            self.gate.blocked.clear()
            self.gate.available.set()

    def _checkpoint(
        self,
        checkpoint_id: int,
        timestamp: int,
        alignment_s: float,
        target: str | None,
        aligned_timeout_ms: int | None = None,
        capture: ChannelCapture | None = None,
    ) -> None:
        """Synchronous part: snapshot the chain, forward the barrier, start the upload
        (which also waits for ``capture``, the channel state of an unaligned checkpoint)."""
        logs.event(
            log, "snapshot_started", logging.DEBUG, task=self.name, checkpoint_id=checkpoint_id
        )
        started = time.monotonic()
        blobs: list[tuple[str, bytes, bool, bool]] = []
        incremental: list[tuple[str, base.OperatorSnapshot]] = []
        for op, uid in zip(self.operators, self.uids, strict=True):
            # Savepoints are self-contained: their snapshots are full.
            snap = None if target is not None else op.snapshot_state_incremental(checkpoint_id)
            if snap is not None:
                incremental.append((uid, snap))
                continue
            snap = op.snapshot_state(checkpoint_id)
            if not snap.is_empty():
                blobs.append((uid, _state_bytes(uid, snap), bool(snap.keyed), bool(snap.operator)))
        self.output.broadcast(("c", checkpoint_id, timestamp, target, aligned_timeout_ms))
        sync_s = time.monotonic() - started
        logs.event(
            log,
            "snapshot_taken",
            logging.DEBUG,
            task=self.name,
            checkpoint_id=checkpoint_id,
            sync_ms=round(sync_s * 1000, 1),
            bytes=sum(len(b[1]) for b in blobs),
        )
        upload = asyncio.get_running_loop().create_task(
            self._upload(checkpoint_id, target, blobs, sync_s, alignment_s, incremental, capture)
        )
        self._uploads.add(upload)
        upload.add_done_callback(self._uploads.discard)

    async def _decline(self, checkpoint_id: int, reason: str) -> None:
        """Tell the JobManager this subtask cannot complete ``checkpoint_id``, and why."""
        await self.report(
            messages.DeclineCheckpoint(
                self.job_id, self.attempt, checkpoint_id, self.vertex.id, self.subtask, reason
            )
        )

    async def _upload(
        self,
        checkpoint_id: int,
        target: str | None,
        blobs: list[tuple[str, bytes, bool, bool]],
        sync_s: float,
        alignment_s: float,
        incremental: list[tuple[str, base.OperatorSnapshot]] | None = None,
        capture: ChannelCapture | None = None,
    ) -> None:
        channel_bytes = 0
        channel_data: bytes | None = None
        if capture is not None:
            await capture.done.wait()
            if capture.failure is not None:
                await self._decline(checkpoint_id, f"unaligned checkpoint: {capture.failure}")
                return
            stored: list[channelstate.StoredChannel] = []
            for channel, elements in sorted(capture.channels.items()):
                if elements:
                    edge, upstream_subtask = channelstate.channel_source(self.inputs, channel)
                    stored.append((edge.upstream, upstream_subtask, edge.parallelism, elements))
            if stored:
                channel_data = channelstate.encode(stored)
                channel_bytes = len(channel_data)
        started = time.monotonic()
        directory = (
            storage.location(target, self.config.s3)
            if target is not None
            else storage.checkpoint_dir(
                storage.location(self.checkpoint_dir, self.config.s3), checkpoint_id
            )
        )
        kg = base.OperatorContext(
            "", self.subtask, self.vertex.parallelism, self.config.max_parallelism, 0, ""
        ).key_group_range

        # The bytes go to the page cache from this thread (a memory copy, milliseconds);
        # only the fsync, which waits on the disk, goes to a worker thread, through
        # offload.to_thread: with asyncio.to_thread the busy event loop kept the GIL from
        # it for seconds (see offload), and every GIL hand-over here is one more wait.
        try:
            handles = []
            paths: list[storage.Location] = []
            shared_bytes = 0  # SST files this checkpoint uploaded (not those it reuses)
            for uid, snap in incremental or []:
                # Incremental keyed state: new SST files go to <job dir>/shared/ (from a
                # worker thread: file copies); the state file holds the references, and a
                # .shared file lists them for the JobManager's reference counting.
                assert snap.incremental is not None
                job_dir = storage.location(self.checkpoint_dir, self.config.s3)
                keyed_part = await offload.to_thread(snap.incremental, job_dir)
                shared_bytes += keyed_part.uploaded_bytes
                data = pickle.dumps((keyed_part, snap.operator), protocol=5)
                blobs.append((uid, data, True, bool(snap.operator)))
                refs = "".join(f"{p}\n" for p in sorted(keyed_part.shared.values()))
                sidecar = directory / f"{uid}-{self.subtask}{shared.SUFFIX}"
                storage.write_unsynced(sidecar, refs.encode())
                paths.append(sidecar)
            remote = storage.is_remote(directory)
            sizes: list[int] = []
            if remote:
                # Object storage: parallel uploads off the loop (network, not the GIL).
                sizes = await asyncio.gather(
                    *(
                        offload.to_thread(
                            storage.write_unsynced, directory / f"{uid}-{self.subtask}.state", data
                        )
                        for uid, data, _, _ in blobs
                    )
                )
            for i, (uid, data, has_keyed, has_operator) in enumerate(blobs):
                name = f"{uid}-{self.subtask}.state"
                size = sizes[i] if remote else storage.write_unsynced(directory / name, data)
                paths.append(directory / name)
                handles.append(
                    messages.StateHandle(
                        uid, self.subtask, name, size, kg.start, kg.end, has_keyed, has_operator
                    )
                )
            if channel_data is not None:
                # Under the chain's head (the operator the channels feed), neither keyed
                # nor operator state: only the restore of this vertex reads it.
                name = f"{self.uids[0]}-{self.subtask}{channelstate.SUFFIX}"
                write = storage.write_unsynced
                size = (
                    await offload.to_thread(write, directory / name, channel_data)
                    if remote
                    else write(directory / name, channel_data)
                )
                paths.append(directory / name)
                handles.append(
                    messages.StateHandle(
                        self.uids[0],
                        self.subtask,
                        name,
                        size,
                        kg.start,
                        kg.end,
                        False,
                        False,
                        has_channel_state=True,
                    )
                )
            logs.event(
                log, "state_written", logging.DEBUG, task=self.name, checkpoint_id=checkpoint_id
            )
            await offload.to_thread(storage.fsync_files, paths)
            logs.event(
                log, "state_synced", logging.DEBUG, task=self.name, checkpoint_id=checkpoint_id
            )
        except Exception as e:
            await self._decline(checkpoint_id, f"writing state to {directory} failed: {e}")
            return
        await self.report(
            messages.AcknowledgeCheckpoint(
                self.job_id,
                self.attempt,
                checkpoint_id,
                self.vertex.id,
                self.subtask,
                handles,
                sum(h.size for h in handles) + shared_bytes,
                sync_ms=sync_s * 1000,
                async_ms=(time.monotonic() - started) * 1000,
                alignment_ms=alignment_s * 1000,
                unaligned=capture is not None,
                channel_state_bytes=channel_bytes,
            )
        )
