"""The embedded local cluster: a JobManager and TaskManagers as child processes.

Like a Kubernetes Deployment, the cluster's supervisor starts a new
TaskManager when one dies (unless told not to), so a killed TaskManager is
replaced and the job recovers onto it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


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
class LocalCluster:
    workdir: Path
    taskmanagers: int = 1
    slots: int = 1
    checkpoint_dir: Path | None = None
    heartbeat_interval_ms: int = 10_000
    heartbeat_timeout_ms: int = 50_000
    respawn: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.log_dir = self.workdir / "logs"
        self.checkpoint_dir = Path(self.checkpoint_dir or self.workdir / "checkpoints")
        self.jobmanager: _Process | None = None
        self.tms: list[_Process | None] = []
        self.rpc_port = 0
        self.rest_port = 0
        self.spawned = 0
        self.respawns = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

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

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "jobmanager.json"
        ready.unlink(missing_ok=True)
        self.jobmanager = self._spawn(
            "jobmanager",
            [
                "jobmanager",
                "--rpc-port",
                "0",
                "--rest-port",
                "0",
                "--checkpoint-dir",
                str(self.checkpoint_dir),
                "--savepoint-dir",
                str(self.workdir / "savepoints"),
                "--heartbeat-interval",
                str(self.heartbeat_interval_ms),
                "--heartbeat-timeout",
                str(self.heartbeat_timeout_ms),
                "--ready-file",
                str(ready),
            ],
        )
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.jobmanager.popen.poll() is not None:
                raise ClusterError(
                    f"the JobManager exited with code {self.jobmanager.popen.returncode};"
                    f" see {self.jobmanager.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(f"the JobManager did not start within {timeout_s} s")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        self.rpc_port, self.rest_port = info["rpc_port"], info["rest_port"]
        self.tms = [self._spawn_taskmanager() for _ in range(self.taskmanagers)]
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        while self.registered_taskmanagers() < self.taskmanagers:
            if time.monotonic() > deadline:
                self.stop()
                raise ClusterError(
                    f"{self.taskmanagers} TaskManagers did not register within {timeout_s} s;"
                    f" see {self.log_dir}"
                )
            time.sleep(0.02)
        return self

    def registered_taskmanagers(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.rest_url}/overview", timeout=5) as resp:
                return int(json.load(resp)["taskmanagers"])
        except OSError:
            return 0

    def _spawn_taskmanager(self) -> _Process:
        self.spawned += 1
        name = f"taskmanager-{self.spawned}"
        return self._spawn(
            name,
            [
                "taskmanager",
                "--jobmanager",
                f"127.0.0.1:{self.rpc_port}",
                "--slots",
                str(self.slots),
                "--id",
                f"tm-{self.spawned}",
            ],
        )

    def _supervise(self) -> None:
        while not self._stopping.wait(0.05):
            with self._lock:
                for i, tm in enumerate(self.tms):
                    if tm is not None and tm.popen.poll() is not None and self.respawn:
                        self.respawns += 1
                        self.tms[i] = self._spawn_taskmanager()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

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

    def add_taskmanager(self) -> None:
        with self._lock:
            self.tms.append(self._spawn_taskmanager())

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        procs = [p for p in [self.jobmanager, *self.tms] if p is not None]
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
