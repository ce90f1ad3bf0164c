"""The JobManager process: TaskManager RPC, job dispatch and the REST endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import msgspec
from aiohttp import web

from streamjob_runtime import config, jobfile, logs, security
from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import savepoint
from streamjob_runtime.ha import factory as ha_factory
from streamjob_runtime.ha import services
from streamjob_runtime.jobmanager import errors, jobmaster, resources, rest
from streamjob_runtime.jobmanager.errors import SubmissionError
from streamjob_runtime.rpc import framing, messages
from streamjob_runtime.state import storage

log = logging.getLogger(__name__)


class JobManager:
    """The JobManager process's services.

    Without HA it leads from the start (epoch 0).  With HA it starts as a
    standby: it serves health checks, refuses TaskManagers and answers job
    requests with 503 until elected; elected, it publishes its address and
    recovers every job in the HA metadata from its latest completed checkpoint.
    It stops coordinating the moment it loses leadership, and :attr:`lost`
    is set so the process exits (a restarted process is a fresh standby).

    ``host`` is the address it advertises (in the HA metadata and its REST URL);
    ``bind_host`` the one its RPC and REST servers listen on (default: ``host``), e.g.
    0.0.0.0 in a pod so that clients inside the pod reach it on localhost too.
    """

    def __init__(
        self,
        cluster: config.ClusterConfig,
        host: str = "127.0.0.1",
        ha: services.HaConfig | None = None,
        identity: str | None = None,
        settings: security.Settings | None = None,
        bind_host: str | None = None,
    ) -> None:
        cluster.validate()
        self.security = settings or security.Settings()
        self.cluster = cluster
        self.host = host
        self.bind_host = bind_host or host
        self.ha = ha if ha is not None and ha.kind is not services.HaKind.NONE else None
        if self.ha is not None:
            self.ha.validate()
        self.identity = identity or f"jobmanager-{uuid.uuid4().hex[:8]}"
        self.rm = resources.ResourceManager()
        self.jobs: dict[str, jobmaster.JobMaster] = {}
        self.rpc_port = 0
        self.rest_port = 0
        self.metrics_port = 0
        self.epoch: int | None = None if self.ha is not None else 0
        self.elector: services.LeaderElector | None = None
        self.store: services.HaStore | None = None
        self.lost = asyncio.Event()
        self.serving = self.ha is None
        self.withdrawn = False  # a standby that nothing routes to as the leader
        self._servers: list[asyncio.AbstractServer] = []
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def is_leader(self) -> bool:
        """Leading and serving: elected, and (with HA) done recovering the jobs."""
        return self.epoch is not None and self.serving

    @property
    def rest_url(self) -> str:
        scheme = "https" if self.security.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.rest_port}"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, rpc_port: int = 0, rest_port: int = 0, metrics_port: int = 0) -> None:
        await asyncio.to_thread(storage.makedirs, storage.location(self.cluster.checkpoint_dir))
        tls = self.security.tls
        server = await asyncio.start_server(
            self._serve_taskmanager,
            self.bind_host,
            rpc_port,
            ssl=tls.server_context() if tls else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None,
        )
        self._servers.append(server)
        self.rpc_port = server.sockets[0].getsockname()[1]
        self._runner = web.AppRunner(rest.create_app(self), access_log=None)
        self.rest_port = await _serve_http(
            self._runner, self.bind_host, rest_port, tls.rest_context() if tls else None
        )
        self._metrics_runner = web.AppRunner(rest.create_metrics_app(self), access_log=None)
        self.metrics_port = await _serve_http(
            self._metrics_runner, self.bind_host, metrics_port, None
        )
        self._spawn(self._check_heartbeats())
        logs.event(
            log,
            "jobmanager_started",
            rpc_port=self.rpc_port,
            rest_port=self.rest_port,
            metrics_port=self.metrics_port,
            tls=tls is not None,
            rest_token=self.security.rest_token is not None,
            checkpoint_dir=self.cluster.checkpoint_dir,
            pid=os.getpid(),
            identity=self.identity,
            ha=self.ha.kind.value if self.ha else "none",
        )
        if self.ha is not None:
            self.elector, self.store = ha_factory.create(self.ha, self.identity)
            self._spawn(self._campaign(self.ha, self.elector, self.store))

    @property
    def standby_ready(self) -> bool:
        """A standby ready to take over: HA services reached, and nothing (a leader
        label a previous process left on this pod) routes to it as the leader."""
        return self.epoch is None and self.withdrawn and not self.lost.is_set()

    async def _campaign(
        self, ha: services.HaConfig, elector: services.LeaderElector, store: services.HaStore
    ) -> None:
        """Withdraw (``HaStore.withdraw``, retried), then campaign: withdrawing after
        being elected would take the label off the new leader."""
        while True:
            try:
                await store.withdraw()
                break
            except Exception as e:  # retried: the API server may be starting
                logs.event(log, "withdraw_failed", logging.WARNING, error=repr(e))
                await asyncio.sleep(ha.retry_period_ms / 1000)
        self.withdrawn = True
        await elector.run(self._on_elected, self._on_revoked)

    # -- leadership ----------------------------------------------------------------------

    async def _on_elected(self, epoch: int) -> None:
        assert self.store is not None
        self.epoch = epoch
        try:
            await self.store.publish_leader(
                epoch,
                services.LeaderInfo(self.identity, epoch, self.host, self.rpc_port, self.rest_url),
            )
            records = await self.store.jobs()
            for record in records:
                await self._recover(epoch, record)
        except services.FencedError as e:
            await self._on_revoked(f"lost leadership while taking over: {e}")
            return
        self.serving = True
        logs.event(
            log, "leader_ready", identity=self.identity, epoch=epoch, recovered_jobs=len(records)
        )

    async def _recover(self, epoch: int, record: services.JobRecord) -> None:
        assert self.store is not None
        stopped = [
            t
            for t in await self.store.triggers()
            if t.job_id == record.job_id
            and t.operation in ("stop", "cancel")
            and t.status == models.SavepointStatus.COMPLETED.value
        ]
        if stopped:
            # The previous leader recorded its stop-with-savepoint before finishing the
            # tasks: resuming would run past the savepoint a client now restores from.
            logs.event(
                log,
                "job_not_resumed",
                job_id=record.job_id,
                request_id=stopped[-1].request_id,
                savepoint=stopped[-1].location,
                reason=f"it was stopped with a savepoint ({stopped[-1].operation})",
            )
            await self.store.remove_job(epoch, record.job_id)
            return
        submission = models.JobSubmission.model_validate_json(record.submission)
        checkpoints = await self.store.checkpoints(record.job_id)
        try:
            await self._start_job(record.job_id, submission, checkpoints)
        except SubmissionError as e:
            logs.event(
                log, "job_recovery_failed", logging.ERROR, job_id=record.job_id, error=str(e)
            )
            return
        logs.event(
            log,
            "job_recovered",
            job_id=record.job_id,
            epoch=epoch,
            latest_checkpoint=(
                checkpoints.retained[-1].checkpoint_id if checkpoints.retained else None
            ),
            next_checkpoint_id=checkpoints.next_checkpoint_id,
        )

    async def _on_revoked(self, reason: str) -> None:
        """Stop acting as leader at once: no checkpoint completes, no task is told anything."""
        if self.lost.is_set():
            return
        logs.event(
            log,
            "leadership_lost",
            logging.WARNING,
            identity=self.identity,
            epoch=self.epoch,
            reason=reason,
        )
        self.epoch = None
        self.serving = False
        for job in self.jobs.values():
            job.suspend()
        await self.rm.close()
        self.lost.set()

    async def _persist_checkpoints(self, job_id: str, record: services.CheckpointRecord) -> None:
        """Fenced write of a job's checkpoint pointers; losing the fence revokes leadership."""
        if self.store is None:
            return
        epoch = self.epoch
        if epoch is None:
            raise services.FencedError("this JobManager is not the leader")
        try:
            await self.store.put_checkpoints(epoch, job_id, record)
        except services.FencedError as e:
            logs.event(log, "ha_write_fenced", logging.ERROR, job_id=job_id, error=str(e))
            self._spawn(self._on_revoked(f"an HA metadata write was fenced: {e}"))
            raise

    async def stop(self) -> None:
        if self.is_leader and self.ha is None:
            for job in self.jobs.values():
                if not job.state.terminal:
                    await job.cancel()
        if self.elector is not None:
            await self.elector.release()  # a standby takes over without waiting for expiry
        if self.store is not None:
            await self.store.close()
        for server in self._servers:
            server.close()
        await self.rm.close()
        for runner in (self._runner, self._metrics_runner):
            if runner is not None:
                await runner.cleanup()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # -- jobs ----------------------------------------------------------------------------

    def savepoint_directory(self, job_id: str, target: str | None) -> storage.Location:
        """Where a new savepoint of ``job_id`` goes; raises SubmissionError without a target."""
        base = target or self.cluster.savepoint_dir
        if not base:
            raise SubmissionError(
                "no target directory given and the JobManager has no default savepoint"
                " directory (start it with --savepoint-dir)"
            )
        try:
            self.security.check_storage(base, "savepoint target directory")
        except security.StorageNotAllowed as e:
            raise errors.ForbiddenError(str(e)) from None
        master = self.jobs.get(job_id)
        try:
            return savepoint.new_directory(
                storage.location(base, master.config.s3 if master is not None else None), job_id
            )
        except storage.StorageError as e:
            raise SubmissionError(str(e)) from None

    async def submit(self, submission: models.JobSubmission) -> str:
        """Validate, record in the HA metadata (fenced), and start a new job."""
        if self.epoch is None:
            raise errors.NotLeaderError(self.identity)
        if submission.restore_from_latest_in is not None:
            submission = await self._newest_restore_point(submission)
        job_id = uuid.uuid4().hex
        master = await self._start_job(job_id, submission, None)
        if self.store is not None:
            try:
                await self.store.put_job(
                    self.epoch, services.JobRecord(job_id, submission.model_dump_json().encode())
                )
            except services.FencedError as e:
                del self.jobs[job_id]
                self._spawn(self._on_revoked(f"an HA metadata write was fenced: {e}"))
                raise errors.NotLeaderError(self.identity) from None
        master.start()
        return job_id

    async def _newest_restore_point(self, submission: models.JobSubmission) -> models.JobSubmission:
        """``restore_from_latest_in`` resolved: the submission restores from the newest
        completed checkpoint in that directory, or its savepoint when newer."""
        directory = submission.restore_from_latest_in
        assert directory is not None
        try:
            # The job file has not run yet: its s3.* options are the submitted ones.
            s3 = config.apply_options(config.JobConfig(), submission.config).s3
            s3.validate()
            path = await asyncio.to_thread(
                savepoint.newest,
                storage.location(directory, s3),
                None
                if submission.savepoint_path is None
                else storage.location(submission.savepoint_path, s3),
            )
        except (savepoint.SavepointError, config.ConfigError, storage.StorageError) as e:
            raise SubmissionError(str(e)) from None
        except OSError as e:  # the storage cannot be read (an object store down, say)
            raise SubmissionError(f"cannot read {directory}: {e}") from None
        logs.event(log, "restore_resolved", directory=directory, restore_point=str(path))
        return submission.model_copy(
            update={"savepoint_path": str(path), "restore_from_latest_in": None}
        )

    async def _start_job(
        self,
        job_id: str,
        submission: models.JobSubmission,
        recovered: services.CheckpointRecord | None,
    ) -> jobmaster.JobMaster:
        """Build the job's JobMaster (started here only when recovered)."""
        base = config.JobConfig(parallelism=submission.parallelism or 1)
        try:
            jobfile.check_allowed(submission.entrypoint, self.security.job_roots)
            if submission.savepoint_path is not None:
                self.security.check_storage(submission.savepoint_path, "restore path")
        except (jobfile.EntrypointNotAllowed, security.StorageNotAllowed) as e:
            raise errors.ForbiddenError(str(e)) from None
        except jobfile.JobFileError as e:
            raise SubmissionError(str(e)) from None
        try:
            base = config.apply_options(base, submission.config)
            if submission.parallelism is not None:
                base = msgspec.structs.replace(base, parallelism=submission.parallelism)
            env, graph = await asyncio.to_thread(
                jobfile.load, submission.entrypoint, submission.args, base
            )
        except (config.ConfigError, jobfile.JobFileError) as e:
            raise SubmissionError(str(e)) from None
        initial: storage.Location | None = None
        if submission.savepoint_path is not None:
            try:
                initial, meta = await asyncio.to_thread(
                    savepoint.resolve, storage.location(submission.savepoint_path, env.config.s3)
                )
                dropped = savepoint.check_operators(
                    meta,
                    graph.operator_parallelism(),
                    env.config.max_parallelism,
                    submission.allow_non_restored_state,
                )
            except (savepoint.SavepointError, storage.StorageError) as e:
                raise SubmissionError(str(e)) from None
            if recovered is None:
                logs.event(
                    log,
                    "restore_requested",
                    savepoint=str(initial),
                    checkpoint_id=meta.checkpoint_id,
                    dropped_state=dropped,
                )
        ha_pointers = None
        if self.store is not None:
            record = recovered or services.CheckpointRecord()
            ha_pointers = jobmaster.HaCheckpoints(
                record, lambda r: self._persist_checkpoints(job_id, r)
            )
        master = jobmaster.JobMaster(
            job_id=job_id,
            submission=submission,
            job_config=env.config,
            graph=graph,
            cluster=self.cluster,
            rm=self.rm,
            initial_savepoint=initial,
            ha=ha_pointers,
            on_terminal=self._job_ended,
            on_savepoint=self._record_trigger if self.store is not None else None,
        )
        self.jobs[job_id] = master
        logs.event(
            log,
            "job_submitted" if recovered is None else "job_recovering",
            job_id=job_id,
            entrypoint=submission.entrypoint,
            parallelism=env.config.parallelism,
            checkpoint_interval_ms=env.config.checkpointing.interval_ms,
            mode=env.config.checkpointing.mode.value,
            vertices=[f"{v.id} x{v.parallelism}" for v in graph.vertices],
        )
        if recovered is not None:
            master.start()
        return master

    async def _record_trigger(self, job_id: str, request: jobmaster.SavepointRequest) -> None:
        """Fenced write of a finished savepoint request's outcome; losing the fence
        revokes leadership (and raises FencedError)."""
        assert self.store is not None
        epoch = self.epoch
        if epoch is None:
            raise services.FencedError("this JobManager is not the leader")
        record = services.TriggerRecord(
            job_id=job_id,
            request_id=request.request_id,
            operation=request.operation,
            status=request.status.value,
            location=request.location,
            failure_cause=request.failure_cause,
            time_ms=logs.now_ms(),
        )
        try:
            await self.store.put_trigger(epoch, record)
        except services.FencedError as e:
            logs.event(log, "ha_write_fenced", logging.ERROR, job_id=job_id, error=str(e))
            self._spawn(self._on_revoked(f"an HA metadata write was fenced: {e}"))
            raise

    async def recorded_trigger(self, job_id: str, request_id: str) -> models.SavepointInfo | None:
        """A savepoint request of ``job_id`` as the HA metadata recorded it (a request
        a previous leader finished); None without HA or when it is not there."""
        if self.store is None:
            return None
        for record in await self.store.triggers():
            if record.job_id == job_id and record.request_id == request_id:
                return models.SavepointInfo(
                    request_id=record.request_id,
                    status=models.SavepointStatus(record.status),
                    location=record.location,
                    failure_cause=record.failure_cause,
                )
        return None

    async def _job_ended(self, job_id: str) -> None:
        """A globally terminal job leaves the HA metadata (its checkpoints stay on disk)."""
        if self.store is None or self.epoch is None:
            return
        try:
            await self.store.remove_job(self.epoch, job_id)
        except services.FencedError as e:
            self._spawn(self._on_revoked(f"an HA metadata write was fenced: {e}"))

    def overview(self) -> models.ClusterOverview:
        states = [j.state for j in self.jobs.values()]
        from streamjob_runtime import __version__

        return models.ClusterOverview(
            taskmanagers=len(self.rm.taskmanagers),
            slots_total=self.rm.slots_total,
            slots_available=self.rm.slots_available,
            jobs_running=sum(not s.terminal for s in states),
            jobs_finished=states.count(models.JobStatus.FINISHED),
            jobs_failed=states.count(models.JobStatus.FAILED),
            jobs_canceled=states.count(models.JobStatus.CANCELED),
            version=__version__,
        )

    def taskmanagers(self) -> models.TaskManagerList:
        now = time.monotonic()
        return models.TaskManagerList(
            taskmanagers=[
                models.TaskManagerDetails(
                    id=tm.tm_id,
                    host=tm.host,
                    data_port=tm.data_port,
                    pid=tm.pid,
                    slots_total=tm.slots,
                    slots_free=self.rm.free_slots(tm),
                    last_heartbeat_ms_ago=int((now - tm.last_heartbeat) * 1000),
                    heartbeat_timeout_ms=self.cluster.heartbeat_timeout_ms,
                    memory_rss_bytes=tm.rss_bytes,
                )
                for tm in sorted(self.rm.taskmanagers.values(), key=lambda t: t.tm_id)
            ]
        )

    # -- TaskManager connections ---------------------------------------------------------

    async def _serve_taskmanager(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tm: resources.TaskManagerInfo | None = None
        reason = "connection closed"
        if self.epoch is None:
            writer.close()  # a standby: the TaskManager looks up the leader again
            return
        try:
            # The peer is authenticated (mutual TLS) by now; its first frame is still
            # held to the small hello limit (all it needs), as is a peer without TLS.
            first = messages.to_jobmanager.decode(
                await framing.read_frame(reader, framing.MAX_HELLO)
            )
            if not isinstance(first, messages.RegisterTaskManager):
                return
            tm = resources.TaskManagerInfo(
                first.tm_id, first.host, first.data_port, first.slots, first.pid, writer
            )
            await self.rm.register(tm)
            await self.rm.send(
                tm.tm_id,
                messages.Registered(
                    tm.tm_id,
                    self.cluster.heartbeat_interval_ms,
                    self.cluster.heartbeat_timeout_ms,
                    self.epoch or 0,
                ),
            )
            while True:
                message = messages.to_jobmanager.decode(await framing.read_frame(reader))
                tm.last_heartbeat = time.monotonic()
                if isinstance(message, messages.Heartbeat) and message.rss_bytes is not None:
                    tm.rss_bytes = message.rss_bytes
                await self._dispatch(tm.tm_id, message)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            reason = "connection closed" if isinstance(e, asyncio.IncompleteReadError) else str(e)
        except msgspec.DecodeError as e:
            reason = f"protocol error: {e}"
        finally:
            writer.close()
            if tm is not None and self.rm.taskmanagers.get(tm.tm_id) is tm:
                await self._lose(tm.tm_id, reason)

    async def _lose(self, tm_id: str, reason: str) -> None:
        if await self.rm.unregister(tm_id, reason) is None:
            return
        for job in self.jobs.values():
            await job.on_taskmanager_lost(tm_id, reason)

    async def _dispatch(self, tm_id: str, message: messages.Message) -> None:
        if isinstance(message, messages.Heartbeat):
            for master in self.jobs.values():
                master.on_metrics(message.metrics)
            return
        job = self.jobs.get(getattr(message, "job_id", ""))
        if job is None:
            return
        if isinstance(message, messages.TaskStateChanged):
            await job.on_task_state(message)
        elif isinstance(message, messages.AcknowledgeCheckpoint):
            await job.on_acknowledge(message)
        elif isinstance(message, messages.DeclineCheckpoint):
            await job.on_decline(message)
        elif isinstance(message, messages.TasksCanceled):
            job.on_tasks_canceled(tm_id, message)

    async def _check_heartbeats(self) -> None:
        timeout_s = self.cluster.heartbeat_timeout_ms / 1000
        interval_s = self.cluster.heartbeat_interval_ms / 1000
        period = min(interval_s, 1.0)
        last_sent = 0.0
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - last_sent >= interval_s:
                last_sent = now
                for tm_id in list(self.rm.taskmanagers):
                    await self.rm.send(tm_id, messages.JobManagerHeartbeat())
            for tm in list(self.rm.taskmanagers.values()):
                if now - tm.last_heartbeat > timeout_s:
                    await self._lose(
                        tm.tm_id,
                        f"no heartbeat for {self.cluster.heartbeat_timeout_ms} ms"
                        " (heartbeat timeout)",
                    )


HANDSHAKE_TIMEOUT_S = 10.0


async def _serve_http(
    runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None
) -> int:
    """Start ``runner`` on ``host:port`` (HTTPS with ``ssl_context``); return the bound port."""
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    assert site._server is not None
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else port


def _write_ready_file(ready_file: str, ready: dict[str, int]) -> None:
    tmp = f"{ready_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(ready, f)
    os.replace(tmp, ready_file)


async def serve(
    cluster: config.ClusterConfig,
    host: str,
    rpc_port: int,
    rest_port: int,
    ready_file: str | None,
    ha: services.HaConfig | None = None,
    identity: str | None = None,
    settings: security.Settings | None = None,
    metrics_port: int = 0,
    bind_host: str | None = None,
) -> int:
    """Run a JobManager until SIGTERM/SIGINT (exit 0) or lost leadership (exit 3)."""
    jm = JobManager(cluster, host, ha, identity, settings, bind_host)
    await jm.start(rpc_port, rest_port, metrics_port)
    if ready_file:
        ready = {
            "rpc_port": jm.rpc_port,
            "rest_port": jm.rest_port,
            "metrics_port": jm.metrics_port,
            "pid": os.getpid(),
        }
        await asyncio.to_thread(_write_ready_file, ready_file, ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    lost = asyncio.create_task(jm.lost.wait())
    await asyncio.wait([stopped, lost], return_when=asyncio.FIRST_COMPLETED)
    if jm.lost.is_set():
        logs.event(log, "jobmanager_exiting", reason="leadership lost; restart as a standby")
        await jm.stop()
        return 3
    logs.event(log, "jobmanager_stopping")
    await jm.stop()
    return 0
