"""The TaskManager process: registers with the JobManager, runs deployed subtasks.

It keeps one control connection to the JobManager (registration, heartbeats,
deployments, checkpoint triggers and acknowledgements) and serves one TCP
data port on which upstream subtasks of other TaskManagers open one
connection per input channel.  Both are mutual TLS with the job's CA (unless
``--insecure``): the data port unpickles record batches, so it reads nothing
from a peer that has not shown a certificate of the job's CA.  A small plain
HTTP port (``--metrics-port``) answers ``/healthz``, ``/readyz`` (registered with
a JobManager) and ``/metrics`` for probes and Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVarTuple

import msgspec

from streamjob_runtime import jobfile, logs, security
from streamjob_runtime.graph import jobgraph, keygroups
from streamjob_runtime.ha import factory as ha_factory
from streamjob_runtime.ha import services
from streamjob_runtime.operators import base, keyed
from streamjob_runtime.rpc import framing, messages
from streamjob_runtime.taskmanager import channelstate, network, offload, task, wire

log = logging.getLogger(__name__)

Ts = TypeVarTuple("Ts")

TaskKey = tuple[str, int]  # (vertex id, subtask)


@dataclass
class Deployment:
    job_id: str
    attempt: int
    tasks: dict[TaskKey, task.Task] = field(default_factory=dict)
    runners: list[asyncio.Task[None]] = field(default_factory=list)
    gates: dict[TaskKey, network.InputGate] = field(default_factory=dict)
    readers: set[asyncio.Task[None]] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    setup: asyncio.Task[None] | None = None


Resolver = Callable[[], Awaitable[tuple[str, int]]]
LeaderWatch = Callable[[tuple[str, int]], Awaitable[None]]


def fixed_address(address: tuple[str, int]) -> Resolver:
    async def resolve() -> tuple[str, int]:
        return address

    return resolve


def ha_leader(cfg: services.HaConfig) -> tuple[Resolver, LeaderWatch]:
    """Find the leader's RPC address in the HA metadata, and notice when it changes."""
    store = ha_factory.create_store(cfg)
    poll_s = cfg.retry_period_ms / 4000

    async def lookup() -> tuple[str, int] | None:
        try:
            leader = await store.leader()
        except Exception as e:  # the HA backend may be briefly unreachable
            logs.event(log, "leader_lookup_failed", logging.WARNING, error=repr(e))
            return None
        return None if leader is None else (leader.rpc_host, leader.rpc_port)

    async def resolve() -> tuple[str, int]:
        while True:  # polls: the HA store is asked, not subscribed to
            address = await lookup()
            if address is not None:
                return address
            await asyncio.sleep(poll_s)

    async def changed(current: tuple[str, int]) -> None:
        while True:
            await asyncio.sleep(poll_s)
            address = await lookup()
            if address is not None and address != current:
                return

    return resolve, changed


class TaskExecutor:
    def __init__(
        self,
        resolve: Resolver,
        slots: int = 1,
        host: str = "127.0.0.1",
        data_port: int = 0,
        tm_id: str | None = None,
        leader_changed: LeaderWatch | None = None,
        settings: security.Settings | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.resolve = resolve
        self.security = settings or security.Settings()
        tls = self.security.tls
        self._server_ssl = tls.server_context() if tls else None
        self._client_ssl = tls.client_context() if tls else None
        self.metrics_port = metrics_port
        self.registered = False
        self.leader_changed = leader_changed
        self.jobmanager: tuple[str, int] = ("", 0)
        self.slots = slots
        self.host = host
        self.data_port = data_port
        self.tm_id = tm_id or f"tm-{uuid.uuid4().hex[:8]}"
        self.deployments: dict[str, Deployment] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._send_lock = asyncio.Lock()
        self._heartbeat_interval_s = 10.0
        self._gate_waiters = asyncio.Condition()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        server = await asyncio.start_server(
            self._serve_data,
            self.host,
            self.data_port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._server_ssl else None,
        )
        self.data_port = server.sockets[0].getsockname()[1]
        metrics: asyncio.Server | None = None
        if self.metrics_port is not None:
            metrics = await asyncio.start_server(self._serve_metrics, self.host, self.metrics_port)
            self.metrics_port = metrics.sockets[0].getsockname()[1]
        logs.event(
            log,
            "taskmanager_started",
            tm_id=self.tm_id,
            data_port=self.data_port,
            metrics_port=self.metrics_port,
            tls=self._server_ssl is not None,
            slots=self.slots,
            pid=os.getpid(),
            native=keygroups.NATIVE,
        )
        try:
            await self._serve(server)
        finally:
            if metrics is not None:
                metrics.close()

    def _metrics_answer(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of ``path`` on the metrics port."""
        if path == "/healthz":
            return 200, "application/json", '{"status": "ok"}'
        if path == "/readyz":
            if self.registered:
                return 200, "application/json", '{"status": "ready"}'
            return 503, "application/json", '{"status": "not registered with a JobManager"}'
        if path == "/metrics":
            tasks = sum(len(d.tasks) for d in self.deployments.values())
            lines = [
                "# HELP streamjob_taskmanager_registered 1 while registered with a JobManager.",
                "# TYPE streamjob_taskmanager_registered gauge",
                f"streamjob_taskmanager_registered {int(self.registered)}",
                "# HELP streamjob_taskmanager_slots Slots this TaskManager offers.",
                "# TYPE streamjob_taskmanager_slots gauge",
                f"streamjob_taskmanager_slots {self.slots}",
                "# HELP streamjob_taskmanager_tasks Subtasks deployed on this TaskManager.",
                "# TYPE streamjob_taskmanager_tasks gauge",
                f"streamjob_taskmanager_tasks {tasks}",
            ]
            return 200, "text/plain; version=0.0.4", "\n".join(lines) + "\n"
        return (
            404,
            "application/json",
            '{"error": "the metrics port serves /metrics, /healthz, /readyz"}',
        )

    async def _serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A minimal HTTP/1.1 GET responder (one request, then close): probes and
        Prometheus need no more, and the TaskManager starts without importing a web
        framework."""
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")  # bounded by the reader's limit
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method != "GET":
                status, kind, body = 405, "application/json", '{"error": "GET only"}'
            else:
                status, kind, body = self._metrics_answer(path.split("?", 1)[0])
            payload = body.encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a malformed or slow request: just close
        finally:
            writer.close()

    async def _serve(self, server: asyncio.Server) -> None:
        delay = 0.1
        async with server:
            while True:
                try:
                    await self._session()
                    delay = 0.1
                except (OSError, asyncio.IncompleteReadError) as e:
                    logs.event(
                        log,
                        "jobmanager_unreachable",
                        logging.WARNING,
                        jobmanager=str(self.jobmanager),
                        error=str(e),
                    )
                await self._cancel_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _session(self) -> None:
        self.jobmanager = await self.resolve()
        reader, writer = await asyncio.open_connection(
            *self.jobmanager,
            ssl=self._client_ssl,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._client_ssl else None,
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        background: list[asyncio.Task[None]] = []
        # Until registered, wait for the JobManager as long as a heartbeat timeout would.
        silence_s: float | None = 60.0
        try:
            await self.send(
                messages.RegisterTaskManager(
                    self.tm_id, self.host, self.data_port, self.slots, os.getpid()
                )
            )
            if self.leader_changed is not None:
                background.append(asyncio.create_task(self._watch_leader(writer)))
            while True:
                try:
                    async with asyncio.timeout(silence_s):
                        frame = await framing.read_frame(reader)
                except TimeoutError:
                    raise ConnectionError(
                        f"no heartbeat from the JobManager for {silence_s:.0f} s"
                    ) from None
                message = messages.to_taskmanager.decode(frame)
                if isinstance(message, messages.Registered):
                    self.registered = True
                    self._heartbeat_interval_s = message.heartbeat_interval_ms / 1000
                    silence_s = message.heartbeat_timeout_ms / 1000
                    logs.event(
                        log,
                        "taskmanager_registered",
                        tm_id=self.tm_id,
                        jobmanager=f"{self.jobmanager[0]}:{self.jobmanager[1]}",
                        leader_epoch=message.leader_epoch,
                    )
                    background.append(asyncio.create_task(self._heartbeats()))
                elif not isinstance(message, messages.JobManagerHeartbeat):
                    await self._dispatch(message)
        finally:
            self._writer = None
            self.registered = False
            for task in background:
                task.cancel()
            writer.close()

    async def _watch_leader(self, writer: asyncio.StreamWriter) -> None:
        """With HA: leave a JobManager as soon as the HA metadata names another leader."""
        assert self.leader_changed is not None
        await self.leader_changed(self.jobmanager)
        logs.event(log, "leader_changed", tm_id=self.tm_id, previous=str(self.jobmanager))
        writer.close()

    async def send(self, message: messages.Message) -> None:
        writer = self._writer
        if writer is None:
            return  # the JobManager is gone; it recovers the job without us
        async with self._send_lock:
            framing.write_frame(writer, messages.encode(message))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _heartbeats(self) -> None:
        while True:
            metrics = [
                messages.TaskMetrics(
                    d.job_id,
                    d.attempt,
                    key[0],
                    key[1],
                    t.records_in,
                    t.output.records_out,
                    int((t.gate.backpressured_s if t.gate else 0) * 1000),
                    int(t.busy_s * 1000),
                )
                for d in self.deployments.values()
                for key, t in d.tasks.items()
            ]
            await self.send(messages.Heartbeat(self.tm_id, metrics, _rss_bytes()))
            await asyncio.sleep(self._heartbeat_interval_s)

    # -- messages from the JobManager ----------------------------------------------------

    def _current(self, job_id: str, attempt: int) -> Deployment | None:
        d = self.deployments.get(job_id)
        return d if d is not None and d.attempt == attempt else None

    async def _dispatch(self, message: messages.Message) -> None:
        if isinstance(message, messages.DeployTasks):
            await self._cancel(message.job_id)
            new = Deployment(message.job_id, message.attempt)
            self.deployments[message.job_id] = new
            new.setup = asyncio.create_task(self._deploy(new, message))
        elif isinstance(message, messages.TriggerCheckpoint):
            d = self._current(message.job_id, message.attempt)
            if d is not None:
                for t in d.tasks.values():
                    if t.is_source or message.aligned_timeout_ms is not None:
                        t.trigger_checkpoint(message)
        elif isinstance(message, messages.NotifyCheckpointComplete):
            d = self._current(message.job_id, message.attempt)
            if d is not None:
                for t in d.tasks.values():
                    await self._guarded(t, t.notify_checkpoint_complete, message.checkpoint_id)
        elif isinstance(message, messages.AbortCheckpoint):
            d = self._current(message.job_id, message.attempt)
            if d is not None:
                for t in d.tasks.values():
                    t.abort_checkpoint(message.checkpoint_id)
        elif isinstance(message, messages.CancelTasks):
            d = self._current(message.job_id, message.attempt)
            await self._cancel(message.job_id)
            await self.send(messages.TasksCanceled(message.job_id, message.attempt))
            if d is not None:
                logs.event(log, "tasks_canceled", job_id=message.job_id, attempt=message.attempt)
        elif isinstance(message, messages.FinishTasks):
            await self._finish(message)

    async def _guarded(self, t: task.Task, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Run ``fn(*args)`` for task ``t``; False, with the task reported FAILED, if it raised."""
        try:
            fn(*args)
        except Exception as e:
            await self.send(
                messages.TaskStateChanged(
                    t.job_id,
                    t.attempt,
                    t.vertex.id,
                    t.subtask,
                    "FAILED",
                    f"{t.name}: {type(e).__name__}: {e}",
                    unrecoverable=isinstance(e, base.UnrecoverableError),
                )
            )
            return False
        return True

    async def _deploy(self, d: Deployment, message: messages.DeployTasks) -> None:
        try:
            await self._deploy_tasks(d, message)
        except Exception as e:
            logs.event(log, "deployment_failed", logging.ERROR, job_id=d.job_id, error=str(e))
            for p in message.placements:
                if p.tm_id == self.tm_id:
                    await self.send(
                        messages.TaskStateChanged(
                            d.job_id,
                            d.attempt,
                            p.vertex_id,
                            p.subtask,
                            "FAILED",
                            f"deploying {p.vertex_id}[{p.subtask}] on {self.tm_id} failed: {e}",
                            unrecoverable=isinstance(e, jobfile.JobFileError),
                        )
                    )
                    break

    async def _deploy_tasks(self, d: Deployment, message: messages.DeployTasks) -> None:
        # The JobManager checked these; checked again so a TaskManager stays within its
        # own roots whatever it is sent.
        jobfile.check_allowed(message.entrypoint, self.security.job_roots)
        if message.restore is not None:
            self.security.check_storage(message.restore.directory, "restore directory")
        _, graph = await offload.to_thread(
            jobfile.load, message.entrypoint, message.args, message.config
        )
        if graph.plan() != message.plan:
            raise jobfile.JobFileError(
                f"the job graph that {message.entrypoint} builds on TaskManager {self.tm_id}"
                " differs from the JobManager's; build(env) must be deterministic and the job"
                " file the same on every node"
            )
        placements = {(p.vertex_id, p.subtask): p for p in message.placements}
        mine = [p for p in message.placements if p.tm_id == self.tm_id]
        capacity = message.config.channel_capacity
        for p in mine:
            vertex = graph.vertex(p.vertex_id)
            channels = sum(graph.vertex(e.upstream).parallelism for e in vertex.inputs)
            if channels:
                d.gates[(p.vertex_id, p.subtask)] = network.InputGate(channels, capacity)
        d.ready.set()
        async with self._gate_waiters:
            self._gate_waiters.notify_all()
        for p in mine:
            vertex = graph.vertex(p.vertex_id)
            writers = [
                await self._record_writer(d, graph, edge, p.subtask, placements, message)
                for edge in vertex.outputs
            ]
            d.tasks[(p.vertex_id, p.subtask)] = task.Task(
                job_id=d.job_id,
                attempt=d.attempt,
                vertex=vertex,
                subtask=p.subtask,
                job_config=message.config,
                gate=d.gates.get((p.vertex_id, p.subtask)),
                writers=writers,
                checkpoint_dir=message.checkpoint_dir,
                restore=message.restore,
                report=self.send,
                inputs=channelstate.input_edges(graph, vertex),
            )
        for t in d.tasks.values():
            d.runners.append(asyncio.create_task(t.run()))

    async def _record_writer(
        self,
        d: Deployment,
        graph: jobgraph.JobGraph,
        edge: jobgraph.VertexEdge,
        subtask: int,
        placements: dict[TaskKey, messages.SubtaskPlacement],
        message: messages.DeployTasks,
    ) -> network.RecordWriter:
        downstream = graph.vertex(edge.downstream)
        offset = 0
        for e in downstream.inputs:
            if e.upstream == edge.upstream:
                break
            offset += graph.vertex(e.upstream).parallelism
        channels: list[network.ChannelWriter] = []
        for j in range(downstream.parallelism):
            target = placements[(downstream.id, j)]
            index = offset + subtask
            if target.tm_id == self.tm_id:
                channels.append(
                    network.LocalChannelWriter(d.gates[(downstream.id, j)].channels[index])
                )
            else:
                channels.append(await self._connect(target, d, index))
        return network.RecordWriter(
            channels, edge.partitioning, subtask, message.config.max_parallelism
        )

    async def _connect(
        self, target: messages.SubtaskPlacement, d: Deployment, channel: int
    ) -> network.RemoteChannelWriter:
        delay = 0.01
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(
                    target.host,
                    target.data_port,
                    ssl=self._client_ssl,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._client_ssl else None,
                )
                break
            except (OSError, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        else:
            raise ConnectionError(
                f"cannot reach TaskManager {target.tm_id} at {target.host}:{target.data_port}"
            )
        _tune_data_socket(writer)
        hello = messages.DataHello(d.job_id, d.attempt, target.vertex_id, target.subtask, channel)
        framing.write_frame(writer, messages.encode(hello))
        await writer.drain()
        return network.RemoteChannelWriter(writer)

    async def _serve_data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _tune_data_socket(writer)
        try:
            # Authenticated by mutual TLS before this handler runs; the hello is bounded
            # small all the same, and a malformed one ends the connection.
            hello = messages.hello_decoder.decode(
                await framing.read_frame(reader, framing.MAX_HELLO)
            )
            gate = await self._wait_for_gate(hello)
            if gate is None:
                return
            d = self.deployments[hello.job_id]
            current = asyncio.current_task()
            assert current is not None
            d.readers.add(current)
            put = gate.channels[hello.channel].put
            receive, read_frame = wire.receive, framing.read_frame
            while True:
                await put(receive(await read_frame(reader)))
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError, ValueError):
            pass  # the upstream is gone (or spoke nonsense); the JobManager restarts the job
        except asyncio.CancelledError:
            pass  # the deployment was cancelled; this top-level handler just ends
        finally:
            writer.close()

    async def _wait_for_gate(self, hello: messages.DataHello) -> network.InputGate | None:
        async def find() -> network.InputGate | None:
            while True:
                d = self.deployments.get(hello.job_id)
                if d is not None and d.attempt > hello.attempt:
                    return None  # a stale connection of an earlier attempt
                if d is not None and d.attempt == hello.attempt and d.ready.is_set():
                    return d.gates.get((hello.vertex_id, hello.subtask))
                async with self._gate_waiters:
                    await self._gate_waiters.wait()

        try:
            async with asyncio.timeout(60):
                return await find()
        except TimeoutError:
            return None

    async def _cancel(self, job_id: str) -> None:
        d = self.deployments.pop(job_id, None)
        if d is None:
            return
        pending = [*d.runners, *d.readers] + ([d.setup] if d.setup else [])
        for r in pending:
            r.cancel()
        for r in pending:
            with contextlib.suppress(BaseException):
                await r
        for t in d.tasks.values():
            t.close()

    async def _cancel_all(self) -> None:
        for job_id in list(self.deployments):
            await self._cancel(job_id)

    async def _finish(self, message: messages.FinishTasks) -> None:
        d = self._current(message.job_id, message.attempt)
        if d is None:
            return
        # A task whose final commit failed is reported FAILED (the job restarts from the
        # final checkpoint and commits again), and not FINISHED as well.
        tasks = list(d.tasks.values())
        finished = [
            t
            for t in tasks
            if await self._guarded(t, t.notify_checkpoint_complete, message.final_checkpoint_id)
        ]
        await self._cancel(message.job_id)
        if tasks and len(finished) == len(tasks) and tasks[0].config.state_backend.local_recovery:
            # The job is over: its local state copies serve no recovery any more.
            settings = tasks[0].config.state_backend
            await offload.to_thread(keyed.discard_local_state, settings, message.job_id)
        for t in finished:
            await self.send(
                messages.TaskStateChanged(t.job_id, t.attempt, t.vertex.id, t.subtask, "FINISHED")
            )
        logs.event(log, "tasks_finished", job_id=message.job_id, attempt=message.attempt)


HANDSHAKE_TIMEOUT_S = 10.0

# Small kernel buffers on data connections: with the bounded input channels they
# bound what one channel holds in flight (Flink bounds it with network credits).
DATA_SOCKET_BUFFER = 64 * 1024


def _tune_data_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, DATA_SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DATA_SOCKET_BUFFER)


# The cyclic garbage collector's first-generation threshold in a TaskManager (CPython's
# default is 700), see tune_garbage_collector.
GC_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Collect the youngest generation after :data:`GC_THRESHOLD` net new container
    objects instead of 700 (the older generations keep their ratios).

    A record batch creates one container (tuple, list, ...) per record, so with
    the default a TaskManager collected every few hundred records, and each
    collection walks every young object still alive: the keyed state values
    written since the last one.  At parallelism 2 of ``bench/keyed_count.py``
    that was ~850 collections per TaskManager and 8 % of its CPU; with this
    threshold none ran after start-up.  The price: cyclic garbage waits longer
    (at most this many objects' worth) and a collection, when one comes, takes
    longer (milliseconds).  Reference counting still frees everything that is
    not in a cycle at once.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def main(
    jobmanager: str | None,
    ha: services.HaConfig | None,
    slots: int,
    host: str,
    data_port: int,
    tm_id: str | None,
    settings: security.Settings | None = None,
    metrics_port: int | None = None,
) -> None:
    """Run a TaskManager that finds its JobManager at ``jobmanager`` or through ``ha``."""
    # The task loop keeps the GIL busy; a worker thread finishing a checkpoint upload
    # (fsync) would wait a whole 5 ms switch interval for each reacquisition, and
    # checkpoints would stretch to seconds.  A short interval costs nothing while no
    # other thread wants the GIL.
    sys.setswitchinterval(0.0005)
    tune_garbage_collector()
    watch: LeaderWatch | None = None
    if ha is not None and ha.kind is not services.HaKind.NONE:
        resolve, watch = ha_leader(ha)
    elif jobmanager:
        jm_host, _, jm_port = jobmanager.rpartition(":")
        resolve = fixed_address((jm_host or "127.0.0.1", int(jm_port)))
    else:
        raise SystemExit("streamjob taskmanager: give --jobmanager HOST:PORT or --ha settings")
    executor = TaskExecutor(resolve, slots, host, data_port, tm_id, watch, settings, metrics_port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(executor.run())


def _rss_bytes() -> int | None:
    """This process's resident memory from ``/proc/self/statm``; None off Linux."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
