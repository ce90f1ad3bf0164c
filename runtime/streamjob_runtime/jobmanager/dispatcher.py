"""The JobManager process: TaskManager RPC, job dispatch and the REST endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from streamjob_runtime import config, jobfile, logs
from streamjob_runtime.api import models
from streamjob_runtime.checkpoint import savepoint
from streamjob_runtime.jobmanager import jobmaster, resources, rest
from streamjob_runtime.jobmanager.errors import SubmissionError
from streamjob_runtime.rpc import framing, messages

log = logging.getLogger(__name__)


class JobManager:
    def __init__(self, cluster: config.ClusterConfig, host: str = "127.0.0.1") -> None:
        cluster.validate()
        self.cluster = cluster
        self.host = host
        self.rm = resources.ResourceManager()
        self.jobs: dict[str, jobmaster.JobMaster] = {}
        self.rpc_port = 0
        self.rest_port = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, rpc_port: int = 0, rest_port: int = 0) -> None:
        await asyncio.to_thread(
            Path(self.cluster.checkpoint_dir).mkdir, parents=True, exist_ok=True
        )
        server = await asyncio.start_server(self._serve_taskmanager, self.host, rpc_port)
        self._servers.append(server)
        self.rpc_port = server.sockets[0].getsockname()[1]
        self._runner = web.AppRunner(rest.create_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, rest_port)
        await site.start()
        assert site._server is not None
        sockets = getattr(site._server, "sockets", None) or []
        self.rest_port = sockets[0].getsockname()[1] if sockets else rest_port
        self._spawn(self._check_heartbeats())
        logs.event(
            log,
            "jobmanager_started",
            rpc_port=self.rpc_port,
            rest_port=self.rest_port,
            checkpoint_dir=self.cluster.checkpoint_dir,
            pid=os.getpid(),
        )

    async def stop(self) -> None:
        for job in self.jobs.values():
            if not job.state.terminal:
                await job.cancel()
        for server in self._servers:
            server.close()
        await self.rm.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # -- jobs ----------------------------------------------------------------------------

    def savepoint_directory(self, job_id: str, target: str | None) -> Path:
        """Where a new savepoint of ``job_id`` goes; raises SubmissionError without a target."""
        base = target or self.cluster.savepoint_dir
        if not base:
            raise SubmissionError(
                "no target directory given and the JobManager has no default savepoint"
                " directory (start it with --savepoint-dir)"
            )
        return savepoint.new_directory(base, job_id)

    async def submit(self, submission: models.JobSubmission) -> str:
        base = config.JobConfig(parallelism=submission.parallelism or 1)
        try:
            base = config.apply_options(base, submission.config)
            if submission.parallelism is not None:
                base = msgspec.structs.replace(base, parallelism=submission.parallelism)
            env, graph = await asyncio.to_thread(
                jobfile.load, submission.entrypoint, submission.args, base
            )
        except (config.ConfigError, jobfile.JobFileError) as e:
            raise SubmissionError(str(e)) from None
        initial: Path | None = None
        if submission.savepoint_path is not None:
            try:
                initial, meta = await asyncio.to_thread(
                    savepoint.resolve, submission.savepoint_path
                )
                dropped = savepoint.check_operators(
                    meta,
                    graph.operator_parallelism(),
                    env.config.max_parallelism,
                    submission.allow_non_restored_state,
                )
            except savepoint.SavepointError as e:
                raise SubmissionError(str(e)) from None
            logs.event(
                log,
                "restore_requested",
                savepoint=str(initial),
                checkpoint_id=meta.checkpoint_id,
                dropped_state=dropped,
            )
        job_id = uuid.uuid4().hex
        master = jobmaster.JobMaster(
            job_id=job_id,
            submission=submission,
            job_config=env.config,
            graph=graph,
            cluster=self.cluster,
            rm=self.rm,
            initial_savepoint=initial,
        )
        self.jobs[job_id] = master
        logs.event(
            log,
            "job_submitted",
            job_id=job_id,
            entrypoint=submission.entrypoint,
            parallelism=env.config.parallelism,
            checkpoint_interval_ms=env.config.checkpointing.interval_ms,
            mode=env.config.checkpointing.mode.value,
            vertices=[f"{v.id} x{v.parallelism}" for v in graph.vertices],
        )
        master.start()
        return job_id

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

    # -- TaskManager connections ---------------------------------------------------------

    async def _serve_taskmanager(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tm: resources.TaskManagerInfo | None = None
        reason = "connection closed"
        try:
            first = messages.to_jobmanager.decode(await framing.read_frame(reader))
            if not isinstance(first, messages.RegisterTaskManager):
                return
            tm = resources.TaskManagerInfo(
                first.tm_id, first.host, first.data_port, first.slots, first.pid, writer
            )
            await self.rm.register(tm)
            await self.rm.send(
                tm.tm_id, messages.Registered(tm.tm_id, self.cluster.heartbeat_interval_ms)
            )
            while True:
                message = messages.to_jobmanager.decode(await framing.read_frame(reader))
                tm.last_heartbeat = time.monotonic()
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
        period = min(self.cluster.heartbeat_interval_ms / 1000, 1.0)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for tm in list(self.rm.taskmanagers.values()):
                if now - tm.last_heartbeat > timeout_s:
                    await self._lose(
                        tm.tm_id,
                        f"no heartbeat for {self.cluster.heartbeat_timeout_ms} ms"
                        " (heartbeat timeout)",
                    )


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
) -> None:
    jm = JobManager(cluster, host)
    await jm.start(rpc_port, rest_port)
    if ready_file:
        ready = {"rpc_port": jm.rpc_port, "rest_port": jm.rest_port, "pid": os.getpid()}
        await asyncio.to_thread(_write_ready_file, ready_file, ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logs.event(log, "jobmanager_stopping")
    await jm.stop()
