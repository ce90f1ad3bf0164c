"""The embedded local cluster: a JobManager and TaskManagers as child processes.

Like a Kubernetes Deployment, the cluster's supervisor starts a new
TaskManager when one dies (unless told not to), so a killed TaskManager is
replaced and the job recovers onto it.

Secure by default, with no set-up: the cluster makes an ephemeral CA and
certificate (``<workdir>/tls/``: every internal connection is mutual TLS, REST
is HTTPS) and a REST token (``<workdir>/rest-token``), which the CLI finds
there; ``insecure=True`` turns both off.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from streamjob_runtime import security

if TYPE_CHECKING:  # aiohttp is imported by the client only when used
    from streamjob_runtime.api import client as rest_client

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


class ClusterError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the process that started the cluster dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: children outlive a crashed parent


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class _JobManager:
    process: _Process
    ready_file: Path
    rpc_port: int = 0
    rest_port: int = 0
    metrics_port: int = 0
    scheme: str = "https"

    @property
    def rest_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.rest_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


@dataclass
class LocalCluster:
    """JobManager(s) and TaskManagers as child processes of this one.

    With ``ha`` (etcd), ``jobmanagers`` JobManagers run as leader and standbys,
    TaskManagers find the leader through etcd, and the supervisor restarts a
    JobManager that exits (one that lost leadership exits by design).

    ``job_roots`` (default: the current directory and the examples) and
    ``storage_roots`` (default: the work directory, the current directory, the
    temporary directory and the checkpoint and savepoint locations) are passed to
    every process; ``insecure`` runs without TLS and REST token.
    """

    workdir: Path
    taskmanagers: int = 1
    slots: int = 1
    checkpoint_dir: Path | str | None = None  # a path, or an s3:// URL
    savepoint_dir: Path | str | None = None  # default savepoint target; a path or s3:// URL
    heartbeat_interval_ms: int = 10_000
    heartbeat_timeout_ms: int = 50_000
    respawn: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    jobmanagers: int = 1
    ha: list[str] = field(default_factory=list)  # --ha ... arguments for every process
    insecure: bool = False
    job_roots: Sequence[str] | None = None
    storage_roots: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.tls_dir = self.workdir / "tls"
        self.token_file = self.workdir / security.TOKEN_FILE
        self.token: str | None = None
        if self.job_roots is None:
            # The working directory and the examples: beside the sources in a checkout,
            # where the image puts them (the JobManager's default roots) when installed.
            examples = [str(EXAMPLES), *security.DEFAULT_JOB_ROOTS]
            self.job_roots = [os.getcwd(), *(r for r in examples if os.path.isdir(r))]
        if self.storage_roots is None:
            self.storage_roots = [str(self.workdir), os.getcwd(), tempfile.gettempdir()]
            # The cluster's own checkpoint and savepoint locations (s3:// URLs included).
            self.storage_roots += [str(d) for d in (self.checkpoint_dir, self.savepoint_dir) if d]
        self.log_dir = self.workdir / "logs"
        self.checkpoint_dir = self.checkpoint_dir or self.workdir / "checkpoints"
        if isinstance(self.checkpoint_dir, str) and "://" not in self.checkpoint_dir:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        self.jms: list[_JobManager] = []
        self.tms: list[_Process | None] = []
        self.spawned = 0
        self.jm_spawned = 0
        self.respawns = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        if self.jobmanagers > 1 and not self.ha:
            raise ClusterError("several JobManagers need HA settings (ha=[...])")

    # -- processes -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        runtime_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (runtime_root, env.get("PYTHONPATH")) if p)
        return env

    def _spawn(self, name: str, args: list[str]) -> _Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "streamjob_runtime.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,  # Ctrl-C in a terminal reaches only the CLI
                preexec_fn=_die_with_parent,
            )
        return _Process(name, popen, log_path)

    @property
    def ca_file(self) -> Path | None:
        """The CA that signed the cluster's certificate (None when insecure)."""
        return None if self.insecure else self.tls_dir / security.CA_FILE

    def ssl_context(self) -> ssl.SSLContext | None:
        """What a REST client verifies the JobManager's certificate with."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, timeout_s: float = 30.0) -> rest_client.JobManagerClient:
        """A REST client of the leading JobManager, with the cluster's token and CA."""
        from streamjob_runtime.api import client

        return client.JobManagerClient(
            self.rest_url, timeout_s=timeout_s, token=self.token, ssl=self.ssl_context()
        )

    def _make_credentials(self) -> None:
        if self.insecure:
            return
        security.write_credentials(self.tls_dir)
        self.token = security.new_token()
        security.write_token(self.token_file, self.token)

    def _security_args(self, role: str) -> list[str]:
        roots = ["--job-roots", ":".join(self.job_roots or [])]
        roots += ["--storage-roots", ":".join(self.storage_roots or [])]
        if self.insecure:
            return ["--insecure", *roots]
        args = ["--tls-dir", str(self.tls_dir), *roots]
        if role == "jobmanager":
            args += ["--rest-token-file", str(self.token_file)]
        return args

    def _spawn_jobmanager(self) -> _JobManager:
        self.jm_spawned += 1
        n = self.jm_spawned
        ready = self.workdir / f"jobmanager-{n}.json"
        ready.unlink(missing_ok=True)
        args = [
            "jobmanager",
            "--rpc-port", "0",
            "--rest-port", "0",
            "--metrics-port", "0",
            *self._security_args("jobmanager"),
            "--checkpoint-dir", str(self.checkpoint_dir),
            "--savepoint-dir", str(self.savepoint_dir or self.workdir / "savepoints"),
            "--heartbeat-interval", str(self.heartbeat_interval_ms),
            "--heartbeat-timeout", str(self.heartbeat_timeout_ms),
            "--ready-file", str(ready),
            "--identity", f"jobmanager-{n}",
            *self.ha,
        ]  # fmt: skip
        name = "jobmanager" if not self.ha else f"jobmanager-{n}"
        return _JobManager(
            self._spawn(name, args), ready, scheme="http" if self.insecure else "https"
        )

    def _await_ready(self, jm: _JobManager, deadline: float) -> None:
        while not jm.ready_file.exists():
            if jm.process.popen.poll() is not None:
                raise ClusterError(
                    f"the JobManager exited with code {jm.process.popen.returncode};"
                    f" see {jm.process.log_path}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"the JobManager did not start; see {jm.process.log_path}")
            time.sleep(0.02)
        info = json.loads(jm.ready_file.read_text())
        jm.rpc_port, jm.rest_port = info["rpc_port"], info["rest_port"]
        jm.metrics_port = info["metrics_port"]

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        self._make_credentials()
        try:
            self.jms = [self._spawn_jobmanager() for _ in range(self.jobmanagers)]
            for jm in self.jms:
                self._await_ready(jm, deadline)
            self.tms = [self._spawn_taskmanager() for _ in range(self.taskmanagers)]
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervisor.start()
            while self.registered_taskmanagers() < self.taskmanagers:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{self.taskmanagers} TaskManagers did not register within"
                        f" {timeout_s} s; see {self.log_dir}"
                    )
                time.sleep(0.02)
        except ClusterError:
            self.stop()
            raise
        return self

    def registered_taskmanagers(self) -> int:
        url = self.leader_rest_url()
        if url is None:
            return 0
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(f"{url}/overview", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5, context=self.ssl_context()) as resp:
                return int(json.load(resp)["taskmanagers"])
        except OSError:
            return 0

    def _spawn_taskmanager(self) -> _Process:
        self.spawned += 1
        name = f"taskmanager-{self.spawned}"
        where = self.ha if self.ha else ["--jobmanager", f"127.0.0.1:{self.jms[0].rpc_port}"]
        return self._spawn(
            name,
            [
                "taskmanager",
                *where,
                "--slots",
                str(self.slots),
                "--id",
                f"tm-{self.spawned}",
                "--metrics-port",
                "0",
                *self._security_args("taskmanager"),
            ],
        )

    def _supervise(self) -> None:
        while not self._stopping.wait(0.05):
            with self._lock:
                if not self.respawn:
                    continue
                for i, tm in enumerate(self.tms):
                    if tm is not None and tm.popen.poll() is not None:
                        self.respawns += 1
                        self.tms[i] = self._spawn_taskmanager()
                if self.ha:
                    for i, jm in enumerate(self.jms):
                        if jm.process.popen.poll() is not None:
                            self.jms[i] = replacement = self._spawn_jobmanager()
                            with contextlib.suppress(ClusterError):  # retried next round
                                self._await_ready(replacement, time.monotonic() + 30)

    # -- addresses -----------------------------------------------------------------------

    def leader_rest_url(self) -> str | None:
        """The REST address of the leading JobManager (the one whose /readyz names it the
        leader; a ready standby says ``standby``)."""
        for jm in list(self.jms):
            if not jm.rest_port or jm.process.popen.poll() is not None:
                continue
            try:  # the plain metrics port: no token or TLS needed to ask
                with urllib.request.urlopen(f"{jm.metrics_url}/readyz", timeout=2) as resp:
                    if resp.status == 200 and json.load(resp).get("role") == "leader":
                        return jm.rest_url
            except (OSError, ValueError):
                continue
        return None

    @property
    def rest_url(self) -> str:
        """The leader's REST address (waits up to 30 s for a leader)."""
        deadline = time.monotonic() + 30
        while (url := self.leader_rest_url()) is None:
            if time.monotonic() > deadline:
                raise ClusterError(f"no JobManager leads; see {self.log_dir}")
            time.sleep(0.02)
        return url

    @property
    def jobmanager(self) -> _Process | None:
        """The first JobManager's process (the only one without HA)."""
        return self.jms[0].process if self.jms else None

    def leader_index(self) -> int:
        url = self.rest_url
        return next(i for i, jm in enumerate(self.jms) if jm.rest_url == url)

    def leader_pid(self) -> int:
        return self.jms[self.leader_index()].process.popen.pid

    # -- chaos -----------------------------------------------------------------------------

    def taskmanager_pids(self) -> list[int]:
        with self._lock:
            return [tm.popen.pid for tm in self.tms if tm is not None and tm.popen.poll() is None]

    def kill_taskmanager(self, index: int = 0, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to TaskManager ``index``; return its pid."""
        with self._lock:
            tm = self.tms[index]
            if tm is None:
                raise ClusterError(f"TaskManager {index} is not running")
            tm.popen.send_signal(sig)
            return tm.popen.pid

    def kill_jobmanager(self, index: int, sig: int = signal.SIGKILL) -> int:
        with self._lock:
            jm = self.jms[index]
            jm.process.popen.send_signal(sig)
            return jm.process.popen.pid

    def add_taskmanager(self) -> None:
        with self._lock:
            self.tms.append(self._spawn_taskmanager())

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        procs = [*(jm.process for jm in self.jms), *(tm for tm in self.tms if tm is not None)]
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
