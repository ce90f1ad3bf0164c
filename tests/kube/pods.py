"""A test "kubelet": the pods of streamjob Deployments in the emulator, run as local processes.

The emulator has no controllers (see tests.kube). :class:`PodRunner` plays the two that
matter for streamjob, in its own thread and event loop, so real JobManagers and
TaskManagers stand in for the pods' containers::

    with PodRunner(kube, tmp_path / "pods") as runner:
        kube.create(desired.jobmanager.service(job, where))
        kube.create(desired.jobmanager.deployment(job, where))
        kube.create(desired.taskmanager.deployment(job, where))
        kube.wait_for(lambda: ...readyReplicas...)
        async with JobManagerClient(runner.rest_url("sum-jobmanager")) as c: ...

The Deployment controller (Recreate semantics, whatever the strategy says): for every
Deployment (of ``namespace``, or of all) whose pod template has a container running
``streamjob jobmanager|taskmanager ...`` (``streamjob`` as the command or the first
argument), it keeps ``spec.replicas`` Pod objects of the current template, named
``<deployment>-<template hash>-<n>``, labelled like the template plus
``pod-template-hash``, owned by the Deployment (so the emulator's garbage collector
deletes them with it, and a foreground deletion waits for them) and held by a finalizer
until their process has exited. A changed template deletes every old pod and creates the
new ones only once all old ones are gone. Fewer replicas delete the not-ready pods
first, then the newest. It reports ``status`` (observedGeneration, replicas,
updatedReplicas, readyReplicas, availableReplicas, unavailableReplicas, conditions;
zeros omitted, as Kubernetes does).

The kubelet: each Pod object it created runs ``python -m streamjob_runtime.cli <args>``
(``sys.executable``), with os.environ, ``KUBECONFIG`` pointing at the emulator (and no
``KUBERNETES_SERVICE_HOST``), then the container's ``env`` (plain values with ``$(VAR)``
references, the downward API: POD_NAME, POD_NAMESPACE, POD_IP = 127.0.0.1...,
ConfigMap and Secret keys, ``envFrom``). ``$(VAR)`` in the arguments is expanded as the
kubelet does. Listening ports are made local: the values of ``--rpc-port``,
``--rest-port`` (JobManager) and ``--data-port`` (TaskManager) become free ports,
chosen again at every start of the container; ``--jobmanager <service>.<ns>.svc:<port>``
becomes ``127.0.0.1:<port of a proxy>`` that forwards each connection to a ready pod the
Service selects (as kube-proxy does), so a TaskManager without HA finds a replaced
JobManager again. A pod whose process exits is restarted (restartPolicy Always) after a
backoff (0.2 s doubling up to 5 s; reset after 10 s of running), counted in
``status.containerStatuses[0].restartCount``. A deleted pod gets SIGTERM, SIGKILL after
its grace period (at most ``grace_period``), then its finalizer is removed. Each pod
logs to ``<log_dir>/<namespace>.<pod>.log`` (restarts append, after a marker line).

Readiness: a container with an ``httpGet`` readinessProbe is probed on its local port
every ``probe_period`` (``failureThreshold`` consecutive failures make it not ready); a
TaskManager (no probe) is ready once its log says it registered with a JobManager
(``taskmanager_registered``) and until it says it lost it (``jobmanager_unreachable``)
(with ``STREAMJOB_LOG_LEVEL`` above INFO, or ``require_registration=False``, like others);
any other container after ``min_ready`` seconds of running. Pod status: phase Running,
podIP 127.0.0.1, Ready and ContainersReady conditions, one container status.

:meth:`PodRunner.client_options` gives a test the token and CAs a pod mounts.

Services: :meth:`PodRunner.rest_url` and :meth:`PodRunner.resolve` (the
``address_resolver`` to give the operator's observing and acting) map a Service to the
local port of a ready pod it selects now, its ``targetPort`` through the container's
named ports. While the runner runs, the emulator's Service proxy
(``<kube.url>/api/v1/namespaces/<ns>/services/<name>:<port>/proxy/...``) reaches the
same pods, so an operator process reaches JobManagers as it would through ``kubectl
proxy`` (its ``--jobmanager-url-template``). The selector is evaluated against the Pod
objects, so the HA leader label the runtime patches onto its own pod
(``streamjob.dev/jobmanager-leader=true``) decides.

Security (the runtime's flags, SECURITY-CONTRACT.md): Secret and ConfigMap volumes are
written to ``<log_dir>/volumes/<namespace>.<pod>/<volume>/`` at every start, and every
argument or ``env`` value under such a volume's ``mountPath`` is rewritten to that
directory (so ``--tls-dir /etc/streamjob/tls`` finds the job's certificates). Without
``--metrics-port`` the process gets one anyway (the default 9249 made local, so the
probes reach it). Job files and state are the host's paths: a process may load job
files from the repository and the temporary directory too (added to ``--job-roots``),
and a JobManager without ``--storage-roots`` uses storage in the temporary directory
(and its checkpoint and savepoint directories, as without the flag). A container that
names no TLS directory (``--tls-dir`` or ``STREAMJOB_TLS_DIR``) runs with
``--insecure`` (pod specs from before the operator made certificates); the REST URLs
the runner hands out are then ``http://``, else ``https://``.

Not emulated: other volumes (paths are the host's: give checkpoint and savepoint
directories as absolute temporary paths), resources, liveness and startup probes, init and sidecar
containers (ignored), node scheduling, ReplicaSets and Endpoints objects, RollingUpdate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ctypes
import datetime
import hashlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp

import streamjob_runtime
from tests.kube.server import KubeEmulator
from tests.kube.store import ApiError
from tests.ports import free_port

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

RUNNER_LABEL = "streamjob.dev/test-kubelet"  # value: the runner's id (its pods)
FINALIZER = "streamjob.dev/test-kubelet"
HASH_LABEL = "pod-template-hash"
NODE_NAME = "test-kubelet"
POD_IP = "127.0.0.1"
ROLES = ("jobmanager", "taskmanager")
PORT_FLAGS: Mapping[str, tuple[str, ...]] = {
    "jobmanager": ("--rpc-port", "--rest-port", "--metrics-port"),
    "taskmanager": ("--data-port", "--metrics-port"),
}
METRICS_PORT = 9249  # the runtime's default --metrics-port
REGISTERED_EVENTS = {"taskmanager_registered": True, "jobmanager_unreachable": False}
RUNTIME_ROOT = Path(streamjob_runtime.__file__).resolve().parent.parent


# -- pure helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A container that runs ``streamjob <role> ...``."""

    container: Obj
    role: str  # "jobmanager" or "taskmanager"
    argv: tuple[str, ...]  # what follows "streamjob": the role, then its flags


def streamjob_command(template: Mapping[str, Any]) -> Command | None:
    """The first container of a pod template whose command line is ``streamjob
    jobmanager|taskmanager ...`` (``streamjob`` as the command or as args[0])."""
    for container in (template.get("spec") or {}).get("containers") or []:
        argv = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if len(argv) >= 2 and PurePosixPath(argv[0]).name == "streamjob" and argv[1] in ROLES:
            return Command(container, argv[1], tuple(argv[1:]))
    return None


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: a defined variable is replaced, an undefined
    reference is kept as it is, ``$$`` is a literal ``$``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def rewrite_flags(
    argv: Sequence[str], flags: Sequence[str], rewrite: Callable[[str], str]
) -> list[str]:
    """``argv`` with the value of each of ``flags`` (``--flag value`` or ``--flag=value``)
    passed through ``rewrite``."""
    out = list(argv)
    for i, token in enumerate(out):
        if token in flags and i + 1 < len(out):
            out[i + 1] = rewrite(out[i + 1])
        else:
            name, eq, value = token.partition("=")
            if eq and name in flags:
                out[i] = f"{name}={rewrite(value)}"
    return out


def service_of_host(host: str, namespace: str) -> tuple[str, str] | None:
    """(namespace, service) for a Service DNS name: ``<svc>.<ns>.svc[.cluster.local]``
    or ``<svc>.<ns>``; None for anything else (bare names are left to the caller)."""
    parts = host.rstrip(".").split(".")
    if parts[-2:] == ["cluster", "local"]:
        parts = parts[:-2]
    if len(parts) == 3 and parts[2] == "svc":
        return parts[1], parts[0]
    if len(parts) == 2 and not parts[1].isdigit():
        return parts[1], parts[0]
    return None


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template (the ``pod-template-hash`` label)."""
    raw = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it (the runner's) ends."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# -- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodProcess:
    """A snapshot of one pod the runner runs."""

    namespace: str
    name: str
    deployment: str
    template_hash: str
    role: str
    pid: int | None  # of the current process; None between restarts
    alive: bool
    ready: bool
    restarts: int
    terminating: bool
    ports: Mapping[int, int]  # containerPort -> local port (of the current process)
    argv: tuple[str, ...]  # the current process's command line
    log_path: Path


@dataclass(frozen=True)
class HistoryEntry:
    at: float  # time.monotonic()
    what: str  # created, started, exited, deleted
    namespace: str
    pod: str
    template_hash: str
    detail: str = ""


@dataclass
class _Pod:
    namespace: str
    name: str
    deployment: str
    owner_uid: str
    template_hash: str
    index: int
    command: Command
    spec: Obj
    labels: dict[str, str]
    log_path: Path
    created_at: str
    process: subprocess.Popen[bytes] | None = None
    argv: tuple[str, ...] = ()
    ports: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0  # monotonic
    started_wall: str = ""
    next_start: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive short runs (backoff)
    last_exit: tuple[int, str, str] | None = None  # code, started, finished
    deleting: bool = False
    term_sent: float | None = None
    ready: bool = False
    ready_changed: str = ""
    probe_failures: int = 0
    watch_log: bool = False  # readiness: registered with a JobManager, as its log says
    registered: bool = False
    log_offset: int = 0
    status_written: Obj | None = None
    tls: bool = False  # runs with --tls-dir: its REST port is HTTPS

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.ready_changed = _now()

    def local_port(self, port: int | str) -> int | None:
        """The local port of a container port (a number or a port name)."""
        if isinstance(port, str) and not port.isdigit():
            for p in self.command.container.get("ports") or []:
                if p.get("name") == port:
                    return self.ports.get(int(p["containerPort"]))
            return None
        return self.ports.get(int(port))

    def snapshot(self) -> PodProcess:
        return PodProcess(
            namespace=self.namespace,
            name=self.name,
            deployment=self.deployment,
            template_hash=self.template_hash,
            role=self.command.role,
            pid=self.process.pid if self.process is not None else None,
            alive=self.alive,
            ready=self.ready,
            restarts=self.restarts,
            terminating=self.deleting,
            ports=dict(self.ports),
            argv=self.argv,
            log_path=self.log_path,
        )


# -- the runner -------------------------------------------------------------------------------


class PodRunner:
    """Runs the pods of streamjob Deployments in ``kube`` as local processes (module doc).

    ``namespace``: only that namespace's Deployments (None: all). The helpers are
    thread-safe; the runner's own work happens on its thread and event loop.
    """

    def __init__(
        self,
        kube: KubeEmulator,
        log_dir: Path,
        *,
        namespace: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        period: float = 0.1,
        probe_period: float = 0.25,
        grace_period: float = 5.0,
        backoff: tuple[float, float] = (0.2, 5.0),
        backoff_reset: float = 10.0,
        min_ready: float = 0.5,
        require_registration: bool = True,
    ) -> None:
        self.kube = kube
        self.log_dir = Path(log_dir)
        self.namespace = namespace
        self.extra_env = dict(extra_env or {})
        self.period = period
        self.probe_period = probe_period
        self.grace_period = grace_period
        self.backoff = backoff
        self.backoff_reset = backoff_reset
        self.min_ready = min_ready
        self.require_registration = require_registration
        self.id = uuid.uuid4().hex[:8]
        self.errors: list[str] = []  # unexpected failures of the runner itself
        self._lock = threading.RLock()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._next_index: dict[tuple[str, str], int] = {}
        self._history: list[HistoryEntry] = []
        self._proxies: dict[tuple[str, str, int], tuple[socket.socket, int]] = {}
        self._proxy_servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._round_robin = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._dead: socket.socket | None = None
        self.dead_url = ""  # once started: a URL that refuses connections
        self.kubeconfig = self.log_dir / "kubeconfig"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PodRunner:
        if self._thread is not None:
            raise RuntimeError("the runner is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.kube.write_kubeconfig(self.kubeconfig)
        self._dead = socket.socket()  # bound, never listening: connecting is refused
        self._dead.bind(("127.0.0.1", 0))
        self.dead_url = f"http://127.0.0.1:{self._dead.getsockname()[1]}"
        loop = asyncio.new_event_loop()
        self._loop = loop
        started: threading.Event = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._main(started))
            except BaseException:
                self.errors.append(traceback.format_exc())
            finally:
                started.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="pod-runner", daemon=True)
        self._thread.start()
        started.wait(10)
        self.kube.serve_services(self.service_endpoint)
        return self

    def stop(self) -> None:
        loop, thread, stop = self._loop, self._thread, self._stop
        if loop is None or thread is None:
            return
        self.kube.serve_services(None)
        if stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(self.grace_period + 30)
        self._thread = None
        if self._dead is not None:
            self._dead.close()
        if thread.is_alive():
            raise AssertionError("the pod runner did not stop")

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError("the pod runner failed:\n" + "\n".join(self.errors))

    async def _main(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        started.set()
        probes = asyncio.create_task(self._probe_loop())
        try:
            while not self._stop.is_set():
                try:
                    self._tick()
                except Exception:
                    self._failed("a reconcile pass")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.period)
        finally:
            probes.cancel()
            await asyncio.gather(probes, return_exceptions=True)
            self._shutdown()
            for server in self._proxy_servers:
                server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            for server in self._proxy_servers:
                await server.wait_closed()
            for sock, _ in self._proxies.values():
                sock.close()
            await self._session.close()

    def _failed(self, what: str) -> None:
        logger.exception("pod runner: %s failed", what)
        self.errors.append(f"{what}: {traceback.format_exc()}")

    def _shutdown(self) -> None:
        """Stop every process (SIGTERM, SIGKILL after the grace period) and let go of the
        Pod objects (finalizer removed, deleted), so deletions do not wait for a runner
        that is gone."""
        with self._lock:
            pods = list(self._pods.values())
            for pod in pods:
                if pod.process is not None and pod.process.poll() is None:
                    pod.process.terminate()
            deadline = time.monotonic() + self.grace_period
            for pod in pods:
                if pod.process is None:
                    continue
                try:
                    pod.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pod.process.kill()
                    pod.process.wait()
            for pod in pods:
                with contextlib.suppress(ApiError, KeyError, RuntimeError, TimeoutError):
                    self._release(pod)
                    self.kube.delete("v1", "pods", pod.name, pod.namespace)
            self._pods.clear()

    # -- helpers for tests ----------------------------------------------------------------

    def processes(self, deployment: str, namespace: str = "default") -> list[PodProcess]:
        """The pods of a Deployment the runner runs (terminating ones included), by name."""
        with self._lock:
            pods = [
                p.snapshot()
                for p in self._pods.values()
                if p.deployment == deployment and p.namespace == namespace
            ]
        return sorted(pods, key=lambda p: p.name)

    def pods(self) -> list[PodProcess]:
        with self._lock:
            return sorted((p.snapshot() for p in self._pods.values()), key=lambda p: p.name)

    def history(self) -> list[HistoryEntry]:
        """What happened to the pods, oldest first: created, started, exited, deleted."""
        with self._lock:
            return list(self._history)

    def kill(self, pod_name: str, sig: int = signal.SIGKILL, namespace: str = "default") -> int:
        """Send ``sig`` to a pod's current process; its pid."""
        with self._lock:
            pod = self._pods.get((namespace, pod_name))
            if pod is None or pod.process is None or pod.process.poll() is not None:
                raise LookupError(f"pod {namespace}/{pod_name} has no running process")
            pod.process.send_signal(sig)
            return pod.process.pid

    def logs(self, pod_name: str | None = None, namespace: str = "default") -> str:
        """A pod's log (every start of it), or every pod's, for failure messages."""
        if pod_name is not None:
            path = self.log_dir / f"{namespace}.{pod_name}.log"
            return path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(
            f"==> {p.name} <==\n{p.read_text(errors='replace')}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def client_options(self, url: str) -> dict[str, Any]:
        """``token`` and ``ssl`` for a ``JobManagerClient`` of ``url`` (a local URL this
        runner gave), from the Secrets the pod behind it mounts (the REST token, the
        job's CAs); empty for a pod that mounts none (or before the runtime takes them)."""
        port = urllib.parse.urlsplit(url).port
        with self._lock:
            pod = next((p for p in self._pods.values() if port in p.ports.values()), None)
        if pod is None:
            return {}
        root = self.log_dir / "volumes" / f"{pod.namespace}.{pod.name}"
        options: dict[str, Any] = {}
        token = next(root.glob("*/token"), None)
        if token is not None:
            options["token"] = token.read_text().strip()
        ca = next(root.glob("*/ca.crt"), None)
        if ca is not None and urllib.parse.urlsplit(url).scheme == "https":
            options["ssl"] = ssl.create_default_context(cafile=str(ca))
        return options

    def endpoints(
        self, service: str, namespace: str = "default", port: int | str = "rest"
    ) -> list[int]:
        """The local ports the Service's ``port`` (its number or name) reaches now: of the
        ready pods it selects, not being deleted."""
        found = self.kube.get("v1", "services", service, namespace)
        if found is None:
            return []
        spec = found.get("spec") or {}
        selector = spec.get("selector") or {}
        entry = next(
            (
                p
                for p in spec.get("ports") or []
                if p.get("port") == port or (p.get("name") is not None and p.get("name") == port)
            ),
            None,
        )
        if not selector or entry is None:
            return []
        target: int | str = entry.get("targetPort", entry["port"])
        selected = self.kube.list(
            "v1", "pods", namespace, ",".join(f"{k}={v}" for k, v in selector.items())
        )
        ports: list[int] = []
        with self._lock:
            for obj in selected:
                meta = obj["metadata"]
                pod = self._pods.get((namespace, meta["name"]))
                if meta.get("deletionTimestamp") or pod is None or pod.deleting:
                    continue
                if not (pod.ready and pod.alive):
                    continue
                local = pod.local_port(target)
                if local is not None:
                    ports.append(local)
        return ports

    def rest_url(
        self,
        service: str,
        namespace: str = "default",
        port: int | str = "rest",
        timeout: float = 30.0,
    ) -> str:
        """``http://127.0.0.1:<port>`` of a ready pod the Service selects (``https://`` if
        that pod runs with TLS); waits up to ``timeout`` seconds for one (LookupError then)."""
        deadline = time.monotonic() + timeout
        while True:
            ports = self.endpoints(service, namespace, port)
            if ports:
                with self._lock:
                    tls = any(p.tls and ports[0] in p.ports.values() for p in self._pods.values())
                return f"{'https' if tls else 'http'}://127.0.0.1:{ports[0]}"
            if time.monotonic() >= deadline:
                raise LookupError(f"Service {namespace}/{service} selects no ready pod")
            time.sleep(0.05)

    def resolve(self, url: str) -> str:
        """A Service URL (``http://<svc>.<ns>.svc:<port>/...``) as a local URL of a ready pod
        the Service selects now; :attr:`dead_url` (refuses connections) when none; any other
        URL unchanged."""
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        where = service_of_host(host, "default")
        if where is None or not host.endswith((".svc", ".svc.cluster.local")):
            return url
        namespace, service = where
        default = 443 if parts.scheme == "https" else 80
        ports = self.endpoints(service, namespace, parts.port or default)
        base = f"http://127.0.0.1:{ports[0]}" if ports else self.dead_url
        return urllib.parse.urlunsplit(
            (parts.scheme, base.removeprefix("http://"), parts.path, parts.query, parts.fragment)
        )

    def service_endpoint(self, namespace: str, service: str, port: str) -> str | None:
        """``http[s]://127.0.0.1:<port>`` of a ready pod the Service selects now for ``port``
        (a number, a name, or "" for its first port), or None: the emulator's Service proxy
        backend while the runner runs."""
        wanted: int | str = int(port) if port.isdigit() else port
        if wanted == "":
            found = self.kube.get("v1", "services", service, namespace)
            ports = ((found or {}).get("spec") or {}).get("ports") or []
            if not ports:
                return None
            wanted = ports[0]["port"]
        local = self.endpoints(service, namespace, wanted)
        if not local:
            return None
        with self._lock:  # a pod given the job's certificate serves REST over HTTPS
            tls = any(
                "--tls-dir" in p.argv and local[0] == p.ports.get(8081) for p in self._pods.values()
            )
        return f"{'https' if tls else 'http'}://127.0.0.1:{local[0]}"

    @property
    def address_resolver(self) -> Callable[[str], str]:
        """:meth:`resolve`, as the operator's ``resolve`` setting wants it."""
        return self.resolve

    # -- one pass -------------------------------------------------------------------------

    def _tick(self) -> None:
        deployments = self.kube.list("apps/v1", "deployments", self.namespace)
        objects = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in self.kube.list("v1", "pods", self.namespace, f"{RUNNER_LABEL}={self.id}")
        }
        with self._lock:
            for pod in list(self._pods.values()):
                try:
                    self._kubelet(pod, objects.get(pod.key))
                except ApiError as e:  # raced with a deletion: the next pass sees it
                    logger.debug("pod runner: pod %s: %s", pod.name, e)
                except Exception:
                    self._failed(f"running pod {pod.namespace}/{pod.name}")
            for deployment in deployments:
                name = deployment["metadata"]["name"]
                try:
                    self._control(deployment)
                except ApiError as e:  # raced with a deletion: the next pass sees it
                    logger.debug("pod runner: Deployment %s: %s", name, e)
                except Exception:
                    self._failed(f"controlling Deployment {name}")

    def _record(self, what: str, pod: _Pod, detail: str = "") -> None:
        self._history.append(
            HistoryEntry(time.monotonic(), what, pod.namespace, pod.name, pod.template_hash, detail)
        )

    # -- the Deployment controller --------------------------------------------------------

    def _control(self, deployment: Obj) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return  # the garbage collector deletes its pods
        uid = meta["uid"]
        template = spec.get("template") or {}
        command = streamjob_command(template)
        mine = [p for p in self._pods.values() if p.owner_uid == uid]
        if command is None:
            for pod in mine:
                self._delete(pod)
            return
        wanted = int(spec.get("replicas", 1))
        current_hash = template_hash(template)
        live = [p for p in mine if not p.deleting]
        for pod in live:
            if pod.template_hash != current_hash:
                self._delete(pod)
        if all(p.template_hash == current_hash for p in mine):  # Recreate: old ones gone
            live = [p for p in mine if not p.deleting]
            for _ in range(wanted - len(live)):
                self._create(deployment, command, current_hash)
            excess = len(live) - wanted
            if excess > 0:
                for pod in sorted(live, key=lambda p: (p.ready, -p.index))[:excess]:
                    self._delete(pod)
        self._deployment_status(deployment, current_hash, wanted)

    def _create(self, deployment: Obj, command: Command, pod_hash: str) -> None:
        meta = deployment["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        template = deployment["spec"]["template"]
        index = self._next_index.get((namespace, name), 0) + 1
        self._next_index[(namespace, name)] = index
        pod_name = f"{name}-{pod_hash}-{index}"
        template_meta = template.get("metadata") or {}
        labels = {
            **(template_meta.get("labels") or {}),
            HASH_LABEL: pod_hash,
            RUNNER_LABEL: self.id,
        }
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict(template_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": [FINALIZER],
            },
            "spec": {**copy.deepcopy(template.get("spec") or {}), "nodeName": NODE_NAME},
        }
        if not body["metadata"]["annotations"]:
            del body["metadata"]["annotations"]
        created = self.kube.create(body)
        pod = _Pod(
            namespace=namespace,
            name=pod_name,
            deployment=name,
            owner_uid=meta["uid"],
            template_hash=pod_hash,
            index=index,
            command=command,
            spec=created["spec"],
            labels=dict(created["metadata"].get("labels") or {}),
            log_path=self.log_dir / f"{namespace}.{pod_name}.log",
            created_at=_now(),
        )
        self._pods[pod.key] = pod
        self._record("created", pod)

    def _delete(self, pod: _Pod) -> None:
        """Delete the Pod object; the kubelet half stops the process and lets it go."""
        if pod.deleting:
            return
        pod.deleting = True
        with contextlib.suppress(ApiError):
            self.kube.delete("v1", "pods", pod.name, pod.namespace)

    def _deployment_status(self, deployment: Obj, current_hash: str, wanted: int) -> None:
        meta = deployment["metadata"]
        mine = [p for p in self._pods.values() if p.owner_uid == meta["uid"] and not p.deleting]
        updated = sum(p.template_hash == current_hash for p in mine)
        ready = sum(p.ready for p in mine)
        counts = {
            "replicas": len(mine),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, wanted - ready),
        }
        old = deployment.get("status") or {}
        available = ready >= wanted
        complete = available and updated >= wanted and len(mine) == wanted
        conditions = [
            self._condition(
                old,
                "Available",
                available,
                "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
            ),
            self._condition(
                old,
                "Progressing",
                True,
                "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                f'ReplicaSet "{meta["name"]}-{current_hash}" '
                + ("has successfully progressed." if complete else "is progressing."),
            ),
        ]
        status: Obj = {
            "observedGeneration": meta.get("generation", 1),
            **{k: (v or None) for k, v in counts.items()},  # zeros omitted, as Kubernetes does
            "conditions": conditions,
        }
        if all(old.get(k) == v for k, v in status.items()):
            return
        self.kube.patch(
            "apps/v1",
            "deployments",
            meta["name"],
            {"status": status},
            namespace=meta["namespace"],
            subresource="status",
        )

    @staticmethod
    def _condition(old: Obj, kind: str, ok: bool, reason: str, message: str) -> Obj:
        status = "True" if ok else "False"
        found = (c for c in old.get("conditions") or [] if c.get("type") == kind)
        before: Obj = next(found, {})
        same = before.get("status") == status
        now = _now()
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastUpdateTime": before.get("lastUpdateTime", now)
            if same and before.get("reason") == reason
            else now,
            "lastTransitionTime": before.get("lastTransitionTime", now) if same else now,
        }

    # -- the kubelet ----------------------------------------------------------------------

    def _kubelet(self, pod: _Pod, obj: Obj | None) -> None:
        now = time.monotonic()
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            pod.deleting = True
        else:
            pod.labels = dict(obj["metadata"].get("labels") or {})
        process = pod.process
        if process is not None and process.poll() is not None:
            self._exited(pod, process.returncode, now)
        if pod.deleting:
            if pod.process is None:
                if obj is not None:
                    self._release(pod)
                del self._pods[pod.key]
                self._record("deleted", pod)
                return
            if pod.term_sent is None:
                pod.term_sent = now
                pod.process.terminate()
            elif now - pod.term_sent > self._grace(pod):
                pod.process.kill()
            return
        if pod.process is None and now >= pod.next_start:
            self._start(pod)
        self._pod_status(pod)

    def _grace(self, pod: _Pod) -> float:
        return min(float(pod.spec.get("terminationGracePeriodSeconds", 30)), self.grace_period)

    def _release(self, pod: _Pod) -> None:
        """Remove our finalizer: a deleted Pod object goes."""
        obj = self.kube.get("v1", "pods", pod.name, pod.namespace)
        if obj is None:
            return
        finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != FINALIZER]
        self.kube.patch(
            "v1", "pods", pod.name, {"metadata": {"finalizers": finalizers or None}}, pod.namespace
        )

    def _exited(self, pod: _Pod, code: int, now: float) -> None:
        pod.last_exit = (code, pod.started_wall, _now())
        pod.process = None
        pod.set_ready(False)
        self._record("exited", pod, f"code {code}")
        if pod.deleting:
            return
        pod.restarts += 1
        if now - pod.started_at >= self.backoff_reset:
            pod.failures = 0
        pod.failures += 1
        base, limit = self.backoff
        pod.next_start = now + min(base * 2 ** (pod.failures - 1), limit)

    def _environment(self, pod: _Pod) -> dict[str, str]:
        """The container's environment, as the kubelet computes it (module doc)."""
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": pod.namespace,
            "metadata.uid": "",
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": str(pod.spec.get("serviceAccountName", "default")),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": POD_IP,
        }
        env: dict[str, str] = {}
        container = pod.command.container
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key, value in self._source_data(pod.namespace, source).items():
                env[prefix + key] = value
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = expand(str(item["value"]), env)
                continue
            source = item.get("valueFrom") or {}
            path = (source.get("fieldRef") or {}).get("fieldPath")
            if path is not None:
                env[name] = fields.get(path) or self._label_field(pod, path)
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                ref = source.get("configMapKeyRef") or source.get("secretKeyRef") or {}
                kind = "configMapRef" if "configMapKeyRef" in source else "secretRef"
                data = self._source_data(pod.namespace, {kind: {"name": ref.get("name")}})
                if ref.get("key") in data:
                    env[name] = data[ref["key"]]
            else:
                env[name] = ""
        return env

    @staticmethod
    def _label_field(pod: _Pod, path: str) -> str:
        for prefix, values in (("metadata.labels", pod.labels), ("metadata.annotations", {})):
            if path.startswith(f"{prefix}['") and path.endswith("']"):
                return values.get(path[len(prefix) + 2 : -2], "")
        return ""

    def _source_data(self, namespace: str, source: Mapping[str, Any]) -> dict[str, str]:
        if "configMapRef" in source:
            found = self.kube.get(
                "v1", "configmaps", source["configMapRef"].get("name", ""), namespace
            )
            return dict((found or {}).get("data") or {})
        if "secretRef" in source:
            found = self.kube.get("v1", "secrets", source["secretRef"].get("name", ""), namespace)
            data = (found or {}).get("data") or {}
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        return {}

    def _command_line(self, pod: _Pod, env: Mapping[str, str]) -> list[str]:
        argv = [expand(a, env) for a in pod.command.argv]
        pod.ports = {}

        def local(value: str) -> str:
            if not value.isdigit() or int(value) == 0:
                return value
            port = int(value)
            if port not in pod.ports:
                pod.ports[port] = free_port()
            return str(pod.ports[port])

        if not any(a == "--metrics-port" or a.startswith("--metrics-port=") for a in argv):
            argv += ["--metrics-port", str(METRICS_PORT)]
        flags = {a.partition("=")[0] for a in argv}
        pod.tls = "--tls-dir" in flags or bool(env.get("STREAMJOB_TLS_DIR"))
        if not pod.tls and "--insecure" not in flags:
            argv.append("--insecure")
        # The image's job directories are the repository here (and the temporary
        # directory, where tests write job files): added to the roots the spec names.
        local_roots = f"{RUNTIME_ROOT.parent}:{tempfile.gettempdir()}"
        if "--job-roots" in flags:
            argv = rewrite_flags(argv, ("--job-roots",), lambda v: f"{v}:{local_roots}")
        else:
            argv += ["--job-roots", local_roots]
        if "--storage-roots" not in flags and pod.command.role == "jobmanager":
            # The runtime's default roots (its checkpoint and savepoint directories, an
            # s3:// prefix among them) and the temporary directory, where tests keep state.
            # (A TaskManager has no default roots: it restores what its JobManager sends.)
            named = [
                argv[i + 1]
                for i, a in enumerate(argv[:-1])
                if a in ("--checkpoint-dir", "--savepoint-dir")
            ]
            argv += ["--storage-roots", ":".join([tempfile.gettempdir(), *named])]
        argv = rewrite_flags(argv, PORT_FLAGS[pod.command.role], local)
        if pod.command.role == "taskmanager":
            argv = rewrite_flags(argv, ("--jobmanager",), lambda v: self._service_address(v, pod))
        return argv

    def _service_address(self, address: str, pod: _Pod) -> str:
        """A ``host:port`` that names a Service, as the address of a local proxy to it."""
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            return address
        where = service_of_host(host, pod.namespace)
        if where is None and self.kube.get("v1", "services", host, pod.namespace) is not None:
            where = (pod.namespace, host)
        if where is None:
            return address
        return f"127.0.0.1:{self._proxy(where[0], where[1], int(port))}"

    def _volumes(self, pod: _Pod) -> dict[str, str]:
        """Write the pod's Secret and ConfigMap volumes; return mountPath -> local dir."""
        root = self.log_dir / "volumes" / f"{pod.namespace}.{pod.name}"
        volumes = {v.get("name"): v for v in pod.spec.get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in pod.command.container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name")) or {}
            if "secret" in volume:
                data = self._source_data(
                    pod.namespace, {"secretRef": {"name": volume["secret"].get("secretName")}}
                )
            elif "configMap" in volume:
                data = self._source_data(
                    pod.namespace, {"configMapRef": {"name": volume["configMap"].get("name")}}
                )
            else:
                continue
            local = root / str(mount["name"])
            local.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (local / key).write_text(value)
                (local / key).chmod(0o600)
            mounts[str(mount["mountPath"]).rstrip("/")] = str(local)
        return mounts

    @staticmethod
    def _localize(value: str, mounts: Mapping[str, str]) -> str:
        """``value`` (a path, or ``--flag=path``) with a mounted volume's path made local."""
        name, eq, rest = value.partition("=") if value.startswith("--") else ("", "", value)
        for path, local in mounts.items():
            if rest == path or rest.startswith(f"{path}/"):
                return f"{name}{eq}{local}{rest[len(path) :]}"
        return value

    def _start(self, pod: _Pod) -> None:
        mounts = self._volumes(pod)
        env = {k: self._localize(v, mounts) for k, v in self._environment(pod).items()}
        argv = [self._localize(a, mounts) for a in self._command_line(pod, env)]
        process_env = dict(os.environ)
        process_env.update(self.extra_env)
        for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
            process_env.pop(name, None)
        process_env["KUBECONFIG"] = str(self.kubeconfig)
        process_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(RUNTIME_ROOT), process_env.get("PYTHONPATH")) if p
        )
        process_env.update(env)
        pod.argv = (sys.executable, "-m", "streamjob_runtime.cli", *argv)
        with open(pod.log_path, "ab") as log:
            log.write(f"--- start {pod.restarts}: {' '.join(argv)}\n".encode())
            log.flush()
            pod.log_offset = log.tell()
            try:
                pod.process = subprocess.Popen(
                    pod.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=process_env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                log.write(f"--- cannot start: {e!r}\n".encode())
                pod.process = None
                pod.started_at = time.monotonic()
                self._exited(pod, 127, time.monotonic())
                return
        pod.started_at = time.monotonic()
        pod.started_wall = _now()
        pod.term_sent = None
        pod.probe_failures = 0
        pod.registered = False
        level = process_env.get("STREAMJOB_LOG_LEVEL", "INFO").upper()
        pod.watch_log = (
            pod.command.role == "taskmanager"
            and self.require_registration
            and level in ("DEBUG", "INFO")  # below INFO the registration is not logged
        )
        self._record("started", pod, f"pid {pod.process.pid}")

    def _pod_status(self, pod: _Pod) -> None:
        ready = "True" if pod.ready else "False"
        created = pod.created_at
        state: Obj
        if pod.alive:
            state = {"running": {"startedAt": pod.started_wall}}
        elif pod.last_exit is not None:
            state = {"waiting": {"reason": "CrashLoopBackOff"}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        container: Obj = {
            "name": pod.command.container.get("name", ""),
            "image": pod.command.container.get("image", ""),
            "imageID": "",
            "ready": pod.ready,
            "started": pod.alive,
            "restartCount": pod.restarts,
            "state": state,
        }
        if pod.process is not None:
            container["containerID"] = f"process://{pod.process.pid}"
        if pod.last_exit is not None:
            code, started, finished = pod.last_exit
            container["lastState"] = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started,
                    "finishedAt": finished,
                }
            }
        transition = pod.ready_changed or created
        status: Obj = {
            "phase": "Running" if pod.started_wall else "Pending",
            "hostIP": POD_IP,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": created,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": created},
                {"type": "Initialized", "status": "True", "lastTransitionTime": created},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": transition},
                {"type": "Ready", "status": ready, "lastTransitionTime": transition},
            ],
            "containerStatuses": [container],
        }
        if status == pod.status_written:
            return
        with contextlib.suppress(ApiError):  # deleted meanwhile: the next pass sees it
            self.kube.patch(
                "v1", "pods", pod.name, {"status": status}, pod.namespace, subresource="status"
            )
            pod.status_written = status

    # -- readiness ------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            with self._lock:
                pods = [p for p in self._pods.values() if p.process is not None and not p.deleting]
            results = await asyncio.gather(*(self._probe(p) for p in pods), return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    self.errors.append(f"a readiness probe: {result!r}")
            await asyncio.sleep(self.probe_period)

    async def _probe(self, pod: _Pod) -> None:
        process = pod.process
        if process is None or process.poll() is not None:
            return
        probe = pod.command.container.get("readinessProbe") or {}
        http = probe.get("httpGet")
        if http is not None:
            named = http.get("port", 80)
            port = pod.local_port(named)
            ok = False
            if port is not None:
                ok = await self._http_ok(f"http://127.0.0.1:{port}{http.get('path', '/')}")
            with self._lock:
                if pod.process is not process:
                    return
                if ok:
                    pod.probe_failures = 0
                    pod.set_ready(True)
                else:
                    pod.probe_failures += 1
                    if not pod.ready or pod.probe_failures >= int(probe.get("failureThreshold", 3)):
                        pod.set_ready(False)
            return
        ready = time.monotonic() - pod.started_at >= self.min_ready
        if pod.watch_log:
            ready = ready and self._registered(pod)
        with self._lock:
            if pod.process is process:
                pod.set_ready(ready)

    async def _http_ok(self, url: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                return 200 <= response.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    @staticmethod
    def _registered(pod: _Pod) -> bool:
        """Whether the TaskManager's log says it is registered with a JobManager now."""
        try:
            with open(pod.log_path, "rb") as log:
                log.seek(pod.log_offset)
                chunk = log.read()
        except OSError:
            return pod.registered
        complete = chunk.rfind(b"\n") + 1
        pod.log_offset += complete
        for line in chunk[:complete].splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event in REGISTERED_EVENTS:
                pod.registered = REGISTERED_EVENTS[event]
        return pod.registered

    # -- Service proxies --------------------------------------------------------------------

    def _proxy(self, namespace: str, service: str, port: int) -> int:
        """The local port of a proxy to the Service's ``port`` (created on first use; runs on
        the runner's loop)."""
        key = (namespace, service, port)
        if key in self._proxies:
            return self._proxies[key][1]
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        local: int = sock.getsockname()[1]
        self._proxies[key] = (sock, local)

        async def serve() -> None:
            server = await asyncio.start_server(lambda r, w: self._forward(key, r, w), sock=sock)
            self._proxy_servers.append(server)

        task = asyncio.get_running_loop().create_task(serve())
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        return local

    async def _forward(
        self,
        key: tuple[str, str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            ports = self.endpoints(key[1], key[0], key[2])
            if not ports:
                return  # no endpoint: the connection is closed at once
            self._round_robin += 1
            target = ports[self._round_robin % len(ports)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                return
            upstream = up_writer
            for w in (writer, up_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()
            self._connections.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
