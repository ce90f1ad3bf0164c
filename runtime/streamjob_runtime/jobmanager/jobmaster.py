"""JobMaster: runs one job through attempts, failover and restarts.

Each attempt allocates slots, deploys every subtask, and ends in one outcome:
finished (input ended everywhere and the final checkpoint completed), failed
(a task failed, a TaskManager was lost, or checkpoints failed beyond the
tolerance) or canceled.  After a failure the restart strategy decides; a
restart restores every task from the latest completed checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec

from streamjob_runtime import config, logs
from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import coordinator, metadata, store
from streamjob_runtime.graph import jobgraph
from streamjob_runtime.ha import services
from streamjob_runtime.jobmanager import resources, restart
from streamjob_runtime.jobmanager.errors import ConflictError
from streamjob_runtime.rpc import messages
from streamjob_runtime.state import storage

log = logging.getLogger(__name__)

TaskKey = tuple[str, int]
CANCEL_TIMEOUT_S = 30.0


@dataclass
class SavepointRequest:
    request_id: str
    operation: str  # "savepoint", "stop" or "cancel": what a repeat of the id must ask for
    status: models.SavepointStatus = models.SavepointStatus.IN_PROGRESS
    location: str | None = None
    failure_cause: str | None = None
    trigger_timestamp: int = 0

    def info(self) -> models.SavepointInfo:
        """Its outcome, as a poll of the request id answers."""
        return models.SavepointInfo(
            request_id=self.request_id,
            status=self.status,
            location=self.location,
            failure_cause=self.failure_cause,
        )

    def request_info(self) -> models.SavepointRequestInfo:
        """The request and its outcome, as the list of requests shows it."""
        return models.SavepointRequestInfo(
            request_id=self.request_id,
            operation=self.operation,
            trigger_timestamp=self.trigger_timestamp,
            status=self.status,
            location=self.location,
            failure_cause=self.failure_cause,
        )


class HaCheckpoints:
    """A job's checkpoint pointers in the HA metadata, written through a fenced callback."""

    def __init__(
        self,
        record: services.CheckpointRecord,
        persist: Callable[[services.CheckpointRecord], Awaitable[None]],
    ) -> None:
        self.record = record
        self.persist = persist
        self.retained = 1
        self.s3: config.S3Config | None = None  # the job's s3.* options

    def checkpoints(self) -> list[storage.Location]:
        """The recorded checkpoints (not savepoints), oldest first."""
        return [
            storage.location(p.path, self.s3) for p in self.record.retained if p.kind != "savepoint"
        ]

    def savepoints(self) -> list[tuple[int, storage.Location]]:
        """The recorded savepoints of the job, with their checkpoint ids."""
        return [
            (p.checkpoint_id, storage.location(p.path, self.s3))
            for p in self.record.retained
            if p.kind == "savepoint"
        ]

    async def record_attempt(self, attempt: int) -> None:
        record = msgspec.structs.replace(self.record, attempt=attempt)
        await self.persist(record)
        self.record = record

    async def reserve(self, next_checkpoint_id: int) -> None:
        record = msgspec.structs.replace(self.record, next_checkpoint_id=next_checkpoint_id)
        await self.persist(record)
        self.record = record

    async def completed(self, checkpoint: store.CompletedCheckpoint) -> None:
        pointer = services.CheckpointPointer(
            checkpoint.checkpoint_id, str(checkpoint.directory), checkpoint.kind
        )
        savepoints = [p for p in self.record.retained if p.kind == "savepoint"]
        checkpoints = [p for p in self.record.retained if p.kind != "savepoint"]
        if checkpoint.kind == "savepoint":
            savepoints.append(pointer)
        else:
            checkpoints = [*checkpoints, pointer][-self.retained :]
        retained = (*savepoints, *checkpoints)
        record = msgspec.structs.replace(self.record, retained=retained)
        await self.persist(record)
        self.record = record


@dataclass(frozen=True)
class Outcome:
    kind: str  # finished | failed | canceled
    cause: str | None = None
    unrecoverable: bool = False


class _Gateway:
    def __init__(self, master: JobMaster, attempt: int) -> None:
        self.master = master
        self.attempt = attempt

    async def trigger(self, pending: coordinator.PendingCheckpoint) -> None:
        m = self.master
        msg = messages.TriggerCheckpoint(
            m.job_id,
            self.attempt,
            pending.checkpoint_id,
            pending.timestamp,
            str(pending.directory) if pending.kind == "savepoint" else None,
            pending.stop,
            pending.drain,
            pending.aligned_timeout_ms,
        )
        # A checkpoint that may go unaligned reaches every task at once: the control
        # message overtakes the data in flight (which the tasks store as channel state).
        targets = (
            m.source_taskmanagers()
            if pending.aligned_timeout_ms is None
            else m.attempt_taskmanagers()
        )
        for tm_id in targets:
            await m.rm.send(tm_id, msg)

    async def notify_complete(self, checkpoint_id: int) -> None:
        m = self.master
        msg = messages.NotifyCheckpointComplete(m.job_id, self.attempt, checkpoint_id)
        for tm_id in m.attempt_taskmanagers():
            await m.rm.send(tm_id, msg)

    async def abort(self, checkpoint_id: int) -> None:
        m = self.master
        msg = messages.AbortCheckpoint(m.job_id, self.attempt, checkpoint_id)
        for tm_id in m.attempt_taskmanagers():
            await m.rm.send(tm_id, msg)


class JobMaster:
    def __init__(
        self,
        *,
        job_id: str,
        submission: models.JobSubmission,
        job_config: config.JobConfig,
        graph: jobgraph.JobGraph,
        cluster: config.ClusterConfig,
        rm: resources.ResourceManager,
        initial_savepoint: storage.Location | None = None,
        ha: HaCheckpoints | None = None,
        on_terminal: Callable[[str], Coroutine[Any, Any, None]] | None = None,
        on_savepoint: Callable[[str, SavepointRequest], Awaitable[None]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.submission = submission
        self.config = job_config
        self.graph = graph
        self.cluster = cluster
        self.rm = rm
        self.state = models.JobStatus.CREATED
        self.start_time = logs.now_ms()
        self.end_time: int | None = None
        self.attempt = 0
        self.restarts = 0
        self.restored_from: int | None = None
        self.latest_restore: models.RestoreInfo | None = None
        self.exceptions: list[models.ExceptionEntry] = []
        self.failure_cause: str | None = None
        self.job_dir = storage.location(cluster.checkpoint_dir, job_config.s3) / job_id
        self.strategy = restart.create(
            job_config.restart_strategy, job_config.checkpointing.enabled
        )
        self.ha = ha
        self.on_terminal = on_terminal
        # Records a finished savepoint request (HA) before the job acts on it: a stop's
        # tasks finish only once a new leader would know the job was stopped.
        self.on_savepoint = on_savepoint
        self.suspended = False
        if ha is not None:
            ha.retained = job_config.checkpointing.retained
            ha.s3 = job_config.s3
            self.attempt = ha.record.attempt  # continue numbering after a change of leader
        self.store = store.CompletedCheckpointStore(
            self.job_dir,
            job_config.checkpointing.retained,
            (
                None
                if initial_savepoint is None
                else storage.location(initial_savepoint, job_config.s3)
            ),
            recovered=ha.checkpoints() if ha is not None else None,
            recovered_savepoints=ha.savepoints() if ha is not None else None,
        )
        self.skipped_restore_points = 0  # retained checkpoints a restore could not use
        self.savepoints: dict[str, SavepointRequest] = {}
        self._savepoint_tasks: set[asyncio.Task[None]] = set()
        self.coordinator = coordinator.CheckpointCoordinator(
            job_id=job_id,
            job_dir=self.job_dir,
            cfg=job_config.checkpointing,
            max_parallelism=job_config.max_parallelism,
            operator_parallelism=graph.operator_parallelism(),
            completed_store=self.store,
            next_checkpoint_id=max(
                self.store.max_id() + 1, ha.record.next_checkpoint_id if ha else 1
            ),
            fail_job=self.fail,
            persistence=ha,
        )
        self.placements: dict[TaskKey, str] = {}
        self.task_states: dict[TaskKey, str] = {}
        self.metrics: dict[TaskKey, messages.TaskMetrics] = {}
        self._outcome: asyncio.Future[Outcome] | None = None
        self._cancel_requested = asyncio.Event()
        self._canceled_acks: dict[str, asyncio.Future[None]] = {}
        self._finishing: asyncio.Task[None] | None = None
        self._main: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()

    # -- views ---------------------------------------------------------------------------

    def attempt_taskmanagers(self) -> set[str]:
        return set(self.placements.values())

    def source_taskmanagers(self) -> set[str]:
        return {tm for (v, _), tm in self.placements.items() if self.graph.vertex(v).is_source}

    def _transition(self, state: models.JobStatus, **fields: object) -> None:
        if state is self.state:
            return
        logs.event(
            log,
            "job_status_changed",
            logging.INFO,
            job_id=self.job_id,
            previous=self.state.value,
            state=state.value,
            **fields,
        )
        self.state = state
        if state.terminal:
            self.end_time = logs.now_ms()
            self.done.set()
            if self.on_terminal is not None and not self.suspended:
                task = asyncio.create_task(self.on_terminal(self.job_id))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    def suspend(self) -> None:
        """Leadership is lost: stop at once, without a word to the TaskManagers."""
        self.suspended = True
        self.coordinator.abandon()
        if self._main is not None:
            self._main.cancel()
        if self._finishing is not None:
            self._finishing.cancel()
        for task in [*self._savepoint_tasks, *self._sends]:
            task.cancel()
        if self._outcome is not None and not self._outcome.done():
            self._outcome.cancel()

    # -- main loop -----------------------------------------------------------------------

    def start(self) -> None:
        self._main = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._run_attempts()
        except Exception as e:  # the job master must end in a terminal state, not vanish
            log.exception("jobmaster_crashed")
            self.failure_cause = f"internal error in the JobManager: {type(e).__name__}: {e}"
            self._transition(models.JobStatus.FAILED, cause=self.failure_cause)

    async def _run_attempts(self) -> None:
        await asyncio.to_thread(self.store.recover)
        while True:
            outcome = await self._run_attempt()
            if outcome.kind == "finished":
                self._transition(models.JobStatus.FINISHED)
                return
            if outcome.kind == "canceled":
                self._transition(models.JobStatus.CANCELED)
                return
            cause = outcome.cause or "unknown failure"
            self.exceptions.append(
                models.ExceptionEntry(timestamp=logs.now_ms(), attempt=self.attempt, cause=cause)
            )
            self.strategy.notify_failure(logs.now_ms())
            if outcome.unrecoverable or not self.strategy.can_restart():
                why = (
                    "the failure is not recoverable by a restart"
                    if outcome.unrecoverable
                    else f"restart strategy {self.strategy.description} is exhausted"
                )
                self.failure_cause = cause
                self._transition(models.JobStatus.FAILED, cause=cause.splitlines()[0], reason=why)
                return
            delay_ms = self.strategy.backoff_ms()
            self._transition(models.JobStatus.RESTARTING)
            logs.event(
                log,
                "restart_scheduled",
                job_id=self.job_id,
                delay_ms=delay_ms,
                next_attempt=self.attempt + 1,
                strategy=self.strategy.description,
                cause=cause.splitlines()[0],
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_ms / 1000):
                    await self._cancel_requested.wait()
            if self._cancel_requested.is_set():
                self._transition(models.JobStatus.CANCELED)
                return
            self.restarts += 1

    async def _run_attempt(self) -> Outcome:
        self.attempt += 1
        if self.ha is not None:
            try:
                await self.ha.record_attempt(self.attempt)
            except services.FencedError as e:
                return Outcome("failed", f"not the leader any more: {e}")
        loop = asyncio.get_running_loop()
        outcome_future: asyncio.Future[Outcome] = loop.create_future()
        self._outcome = outcome_future
        if self._cancel_requested.is_set():
            return Outcome("canceled")
        try:
            selection = await asyncio.to_thread(self.store.select_restore)
        except OSError as e:
            # The checkpoint storage cannot be read (an object store down, say): fail this
            # attempt for the restart strategy; never start empty, never kill the loop.
            return Outcome("failed", f"reading the checkpoints failed: {e}")
        if storage.is_remote(self.job_dir):
            try:
                await asyncio.to_thread(self.store.abort_abandoned_uploads)
            except OSError as e:  # a leak at worst, never a reason to fail the attempt
                logs.event(log, "abort_uploads_failed", logging.WARNING, error=str(e))
        if selection.skipped:
            self._report_skipped(selection)
        if selection.restore is None and selection.required:
            # Starting empty would re-emit everything the sinks already committed.
            return Outcome("failed", selection.missing_message(self.job_id), unrecoverable=True)
        restore = selection.restore
        try:
            slots = await self.rm.allocate(
                self.job_id, self.graph.slots_needed, self.cluster.slot_request_timeout_ms / 1000
            )
        except resources.SlotTimeoutError as e:
            return Outcome("failed", str(e))
        self._deploy(slots, restore)
        try:
            outcome = await outcome_future
        finally:
            await self.coordinator.stop(f"attempt {self.attempt} ended")
        if outcome.kind != "finished":
            await self._cancel_tasks()
        await self.rm.release(self.job_id)
        self.placements = {}
        return outcome

    def _report_skipped(self, selection: store.RestoreSelection) -> None:
        """Retained checkpoints the restore passes over: a log line, a history entry, a metric."""
        self.skipped_restore_points += len(selection.skipped)
        skipped = "; ".join(f"{s.directory}: {s.reason}" for s in selection.skipped)
        if selection.restore is not None:
            outcome = f"restoring from {selection.restore[0]} instead"
        elif selection.required:
            outcome = "no other checkpoint or savepoint is left: the job fails"
        else:
            outcome = "starting without state"
        cause = f"attempt {self.attempt} cannot restore {skipped}; {outcome}"
        logs.event(
            log,
            "restore_checkpoints_skipped",
            logging.WARNING,
            job_id=self.job_id,
            attempt=self.attempt,
            skipped=[str(s.directory) for s in selection.skipped],
            restoring_from=None if selection.restore is None else str(selection.restore[0]),
        )
        self.exceptions.append(
            models.ExceptionEntry(timestamp=logs.now_ms(), attempt=self.attempt, cause=cause)
        )

    def _deploy(
        self,
        slots: list[resources.Slot],
        restore: tuple[storage.Location, metadata.CheckpointMetadata] | None,
    ) -> None:
        self.placements = {}
        placements: list[messages.SubtaskPlacement] = []
        for vertex in self.graph.vertices:
            for i in range(vertex.parallelism):
                tm = slots[i].taskmanager
                self.placements[(vertex.id, i)] = tm.tm_id
                placements.append(
                    messages.SubtaskPlacement(vertex.id, i, tm.tm_id, tm.host, tm.data_port)
                )
        self.task_states = dict.fromkeys(self.placements, "DEPLOYING")
        self.metrics = {}
        spec = None
        self.restored_from = None
        if restore is not None:
            directory, meta = restore
            spec = messages.RestoreSpec(
                meta.checkpoint_id,
                meta.job_id,
                str(directory),
                {uid: (op.parallelism, op.handles) for uid, op in meta.operators.items()},
            )
            self.restored_from = meta.checkpoint_id
            self.latest_restore = models.RestoreInfo(
                id=meta.checkpoint_id,
                path=str(directory),
                kind=meta.kind,
                restore_timestamp=logs.now_ms(),
                attempt=self.attempt,
            )
            logs.event(
                log,
                "restoring_from_checkpoint",
                job_id=self.job_id,
                checkpoint_id=meta.checkpoint_id,
                attempt=self.attempt,
                path=str(directory),
            )
        message = messages.DeployTasks(
            job_id=self.job_id,
            attempt=self.attempt,
            entrypoint=self.submission.entrypoint,
            args=self.submission.args,
            config=self.config,
            plan=self.graph.plan(),
            placements=placements,
            checkpoint_dir=str(self.job_dir),
            restore=spec,
        )
        logs.event(
            log,
            "job_deploying",
            job_id=self.job_id,
            attempt=self.attempt,
            tasks=len(placements),
            taskmanagers=sorted(self.attempt_taskmanagers()),
        )
        for tm_id in self.attempt_taskmanagers():
            send = asyncio.create_task(self._send_or_fail(tm_id, message))
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)

    async def _send_or_fail(self, tm_id: str, message: messages.Message) -> None:
        if not await self.rm.send(tm_id, message):
            await self.fail(f"TaskManager {tm_id} is unreachable")

    async def _cancel_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        self._canceled_acks = {}
        for tm_id in self.attempt_taskmanagers():
            if tm_id in self.rm.taskmanagers:
                self._canceled_acks[tm_id] = loop.create_future()
                await self.rm.send(tm_id, messages.CancelTasks(self.job_id, self.attempt))
        if self._canceled_acks:
            await asyncio.wait(list(self._canceled_acks.values()), timeout=CANCEL_TIMEOUT_S)
        self._canceled_acks = {}

    # -- events --------------------------------------------------------------------------

    async def fail(self, cause: str, unrecoverable: bool = False) -> None:
        if self.suspended:
            return
        if self._outcome is not None and not self._outcome.done():
            logs.event(
                log,
                "job_failing",
                logging.WARNING,
                job_id=self.job_id,
                attempt=self.attempt,
                cause=cause.splitlines()[0],
            )
            self._outcome.set_result(Outcome("failed", cause, unrecoverable))

    async def cancel(self) -> None:
        if self.state.terminal:
            return
        self._cancel_requested.set()
        self._transition(models.JobStatus.CANCELLING)
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(Outcome("canceled"))

    async def on_taskmanager_lost(self, tm_id: str, reason: str) -> None:
        ack = self._canceled_acks.get(tm_id)
        if ack is not None and not ack.done():
            ack.set_result(None)
        if tm_id in self.attempt_taskmanagers():
            await self.fail(f"TaskManager {tm_id} was lost: {reason}")

    def on_tasks_canceled(self, tm_id: str, msg: messages.TasksCanceled) -> None:
        ack = self._canceled_acks.get(tm_id)
        if msg.attempt == self.attempt and ack is not None and not ack.done():
            ack.set_result(None)

    def on_metrics(self, metrics: list[messages.TaskMetrics]) -> None:
        for m in metrics:
            if m.job_id == self.job_id and m.attempt == self.attempt:
                self.metrics[(m.vertex_id, m.subtask)] = m

    async def on_task_state(self, msg: messages.TaskStateChanged) -> None:
        if self.suspended:
            return
        if msg.attempt != self.attempt or (msg.vertex_id, msg.subtask) not in self.task_states:
            return
        self.task_states[(msg.vertex_id, msg.subtask)] = msg.state
        states = set(self.task_states.values())
        if msg.state == "FAILED":
            await self.fail(msg.cause or "task failed", msg.unrecoverable)
        elif msg.state == "RUNNING" and states <= {"RUNNING", "INPUT_ENDED"}:
            if self.state is not models.JobStatus.RUNNING:
                self._transition(models.JobStatus.RUNNING, attempt=self.attempt)
                self.coordinator.start(_Gateway(self, self.attempt), set(self.task_states))
        elif msg.state == "INPUT_ENDED" and states == {"INPUT_ENDED"}:
            self.coordinator.start(_Gateway(self, self.attempt), set(self.task_states))
            self._finishing = asyncio.create_task(self._final_checkpoint(self.attempt))
        elif (
            msg.state == "FINISHED"
            and states == {"FINISHED"}
            and self._outcome is not None
            and not self._outcome.done()
        ):
            self._outcome.set_result(Outcome("finished"))

    async def _final_checkpoint(self, attempt: int) -> None:
        """Input ended everywhere: one last checkpoint commits the sinks' last data."""
        pending = await self.coordinator.trigger(final=True)
        if pending is None:
            return
        completed = await pending.done
        if attempt != self.attempt:
            return
        if completed is None:
            await self.fail("the final checkpoint failed; the job restarts to finish again")
            return
        message = messages.FinishTasks(self.job_id, attempt, completed.checkpoint_id)
        for tm_id in self.attempt_taskmanagers():
            await self.rm.send(tm_id, message)

    async def on_acknowledge(self, msg: messages.AcknowledgeCheckpoint) -> None:
        if msg.attempt == self.attempt:
            await self.coordinator.receive_acknowledge(msg)

    async def on_decline(self, msg: messages.DeclineCheckpoint) -> None:
        if msg.attempt == self.attempt:
            await self.coordinator.receive_decline(msg)

    # -- savepoints ----------------------------------------------------------------------

    def trigger_savepoint(
        self,
        directory: storage.Location,
        *,
        stop: bool = False,
        drain: bool = False,
        cancel: bool = False,
        request_id: str | None = None,
    ) -> SavepointRequest:
        """Start a savepoint (and optionally stop or cancel the job after it).

        ``request_id``: the client's id for the request (Flink's ``triggerId``); a new
        one is chosen when None. A repeat of an id this job knows returns that request,
        whatever its state and the job's now, and starts nothing: a client that lost the
        answer (it crashed, the connection dropped) sends the request again safely. A
        repeat that asks for another operation (a stop under a plain savepoint's id) is
        refused. Ids are remembered as long as this JobMaster runs; with HA a finished
        request's outcome is recorded in the HA metadata (``on_savepoint``) before the job
        acts on it, for the next leader.

        Raises :class:`ConflictError` unless the job is RUNNING with no savepoint
        in progress.
        """
        operation = "cancel" if cancel else "stop" if stop else "savepoint"
        known = None if request_id is None else self.savepoints.get(request_id)
        if known is not None:
            if known.operation != operation:
                raise ConflictError(
                    f"request {request_id} of job {self.job_id} is a {known.operation}, not a"
                    f" {operation}: choose a new trigger id for another operation"
                )
            return known
        if self.state is not models.JobStatus.RUNNING or self.coordinator.gateway is None:
            raise ConflictError(
                f"job {self.job_id} is {self.state.value}: savepoints need a RUNNING job;"
                " wait until it runs again (GET /jobs/<id>)"
            )
        busy = [
            r for r in self.savepoints.values() if r.status is models.SavepointStatus.IN_PROGRESS
        ]
        if busy:
            raise ConflictError(
                f"savepoint {busy[0].request_id} of job {self.job_id} is still in progress;"
                " wait for it (GET /jobs/<id>/savepoints/<request id>) before triggering another"
            )
        request = SavepointRequest(
            request_id or uuid.uuid4().hex, operation, trigger_timestamp=logs.now_ms()
        )
        self.savepoints[request.request_id] = request
        task = asyncio.create_task(self._savepoint(request, directory, stop, drain, cancel))
        self._savepoint_tasks.add(task)
        task.add_done_callback(self._savepoint_tasks.discard)
        return request

    async def _savepoint(
        self,
        request: SavepointRequest,
        directory: storage.Location,
        stop: bool,
        drain: bool,
        cancel: bool,
    ) -> None:
        attempt = self.attempt
        pending = await self.coordinator.trigger(
            savepoint_dir=directory, stop=stop or cancel, drain=drain
        )
        completed = None if pending is None else await pending.done
        if completed is None:
            reason = "the attempt ended" if pending is None else pending.failure
            request.status = models.SavepointStatus.FAILED
            request.failure_cause = f"savepoint failed: {reason}"
            if not await self._recorded(request):
                return
            if (stop or cancel) and attempt == self.attempt:
                # The sources stopped at the barrier: only a restart resumes the job.
                await self.fail(f"stop-with-savepoint failed ({reason}); restarting the job")
            return
        request.status = models.SavepointStatus.COMPLETED
        request.location = str(completed.directory)
        if not await self._recorded(request):
            return
        if cancel:
            await self.cancel()
        elif stop and attempt == self.attempt:
            message = messages.FinishTasks(self.job_id, attempt, completed.checkpoint_id)
            for tm_id in self.attempt_taskmanagers():
                await self.rm.send(tm_id, message)

    async def _recorded(self, request: SavepointRequest) -> bool:
        """Record the request's outcome; False when the leader lost its fence (then
        nothing more is done: the new leader decides from the HA metadata)."""
        if self.on_savepoint is None:
            return True
        try:
            await self.on_savepoint(self.job_id, request)
        except services.FencedError:
            return False
        return True

    # -- REST views ----------------------------------------------------------------------

    def details(self) -> models.JobDetails:
        vertices = []
        for v in self.graph.vertices:
            subtasks = [(v.id, i) for i in range(v.parallelism)]
            states = {self.task_states.get(k, "CREATED") for k in subtasks}
            status = states.pop() if len(states) == 1 else "MIXED"
            ms = [self.metrics[k] for k in subtasks if k in self.metrics]
            vertices.append(
                models.VertexInfo(
                    id=v.id,
                    name=" -> ".join(t.name for t in v.operators),
                    operators=[t.uid for t in v.operators],
                    parallelism=v.parallelism,
                    status=status if not self.state.terminal else self.state.value,
                    records_in=sum(m.records_in for m in ms),
                    records_out=sum(m.records_out for m in ms),
                    backpressured_ms=sum(m.backpressured_ms for m in ms),
                    busy_ms=sum(m.busy_ms for m in ms),
                    inputs=[
                        models.VertexInput(id=e.upstream, ship_strategy=e.partitioning.kind.value)
                        for e in v.inputs
                    ],
                )
            )
        end = self.end_time or logs.now_ms()
        return models.JobDetails(
            jid=self.job_id,
            name=self.config.name,
            state=self.state,
            start_time=self.start_time,
            end_time=self.end_time,
            duration_ms=end - self.start_time,
            restarts=self.restarts,
            attempt=self.attempt,
            restored_from=self.restored_from,
            failure_cause=self.failure_cause,
            vertices=vertices,
        )

    def overview(self) -> models.JobOverview:
        return models.JobOverview(
            jid=self.job_id,
            name=self.config.name,
            state=self.state,
            start_time=self.start_time,
            restarts=self.restarts,
        )

    def checkpoint_statistics(self) -> models.CheckpointingStatistics:
        c = self.coordinator
        latest = self.store.latest()
        return models.CheckpointingStatistics(
            counts=models.CheckpointCounts(
                completed=c.counts["completed"],
                failed=c.counts["failed"],
                in_progress=c.in_progress(),
            ),
            latest_completed=None if latest is None else _completed_info(latest),
            history=[_checkpoint_entry(h) for h in reversed(c.history)],
            config=_checkpoint_config(self.config.checkpointing),
            latest_restored=self.latest_restore,
        )

    def savepoint_requests(self) -> models.SavepointRequestList:
        newest_first = sorted(
            self.savepoints.values(), key=lambda r: r.trigger_timestamp, reverse=True
        )
        return models.SavepointRequestList(requests=[r.request_info() for r in newest_first])

    def job_config(self) -> models.JobConfigInfo:
        sub = self.submission
        return models.JobConfigInfo(
            jid=self.job_id,
            name=self.config.name,
            entrypoint=sub.entrypoint,
            args=sub.args,
            parallelism=self.config.parallelism,
            max_parallelism=self.config.max_parallelism,
            savepoint_path=sub.savepoint_path,
            allow_non_restored_state=sub.allow_non_restored_state,
            config=sub.config,
            restart_strategy=self.strategy.description,
        )

    def exception_history(self) -> models.JobExceptions:
        return models.JobExceptions(
            root_exception=self.exceptions[-1].cause if self.exceptions else None,
            history=list(reversed(self.exceptions)),
        )


# -- REST models of the checkpoint coordinator's records -------------------------------------


def _completed_info(checkpoint: store.CompletedCheckpoint) -> models.CompletedCheckpointInfo:
    return models.CompletedCheckpointInfo(
        id=checkpoint.checkpoint_id,
        path=str(checkpoint.directory),
        trigger_timestamp=checkpoint.timestamp,
        duration_ms=checkpoint.duration_ms,
        bytes=checkpoint.bytes,
        alignment_ms=checkpoint.alignment_ms,
    )


def _checkpoint_entry(stats: coordinator.CheckpointStats) -> models.CheckpointEntry:
    return models.CheckpointEntry(
        id=stats.checkpoint_id,
        kind=stats.kind,
        status=stats.status,
        trigger_timestamp=stats.trigger_timestamp,
        duration_ms=stats.duration_ms,
        bytes=stats.bytes,
        alignment_ms=stats.alignment_ms,
        unaligned=stats.unaligned,
        persisted_data_bytes=stats.channel_state_bytes,
        failure=stats.failure,
        subtasks=[_subtask_stats(a) for a in stats.acks],
    )


def _subtask_stats(ack: coordinator.SubtaskAck) -> models.SubtaskCheckpointStats:
    return models.SubtaskCheckpointStats(
        vertex=ack.vertex_id,
        subtask=ack.subtask,
        ack_ms=round(ack.ack_ms, 1),
        bytes=ack.bytes,
        sync_ms=round(ack.sync_ms, 1),
        async_ms=round(ack.async_ms, 1),
        alignment_ms=round(ack.alignment_ms, 1),
        unaligned=ack.unaligned,
        persisted_data_bytes=ack.channel_state_bytes,
    )


def _checkpoint_config(cfg: config.CheckpointConfig) -> models.CheckpointConfigInfo:
    return models.CheckpointConfigInfo(
        enabled=cfg.enabled,
        interval_ms=cfg.interval_ms,
        mode=cfg.mode.value,
        timeout_ms=cfg.timeout_ms,
        min_pause_ms=cfg.min_pause_ms,
        max_concurrent=cfg.max_concurrent,
        tolerable_failures=cfg.tolerable_failures,
        retained=cfg.retained,
        unaligned=cfg.unaligned,
        aligned_checkpoint_timeout_ms=cfg.aligned_timeout_ms,
    )
