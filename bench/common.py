"""Helpers shared by the benchmarks: CPU time and memory from /proc, cluster start, checkpoint
stats, exact-output checks, the operator benchmarks' emulator process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "runtime"))

from streamjob_runtime.api import client, models  # noqa: E402
from streamjob_runtime.connectors import files  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a process did not start, a wait
    timed out): the run reports it and fails."""


def directory(path: str) -> str:
    """``--workdir``'s argparse type: ``path``, created with its parents when missing."""
    os.makedirs(path, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads) in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 of proc(5) (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICK


@dataclass
class CpuMeter:
    """Sums the CPU time of processes, remembering the last reading of each pid.

    Call :meth:`sample` regularly: a process that exits keeps its last reading.
    """

    start: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)

    def sample(self, pids: list[int]) -> None:
        for pid in pids:
            cpu = cpu_seconds(pid)
            if cpu is None:
                continue
            self.start.setdefault(pid, cpu)
            self.last[pid] = cpu

    @property
    def used_s(self) -> float:
        return sum(self.last[pid] - self.start[pid] for pid in self.last)


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB, from /proc; (0, 0) once it is gone."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in values:
                values[parts[0]] = int(parts[1])
    return values["VmRSS:"], values["VmHWM:"]


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have used (non-idle time in /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


class OtherLoad:
    """CPU that processes other than the measured ones used during a run, in cores."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy = machine_busy_s()
        self.own = cpu_seconds(os.getpid()) or 0.0

    def cores(self, measured_cpu_s: float) -> float:
        """Average cores used by everyone else (``measured_cpu_s``: the measured processes)."""
        own = (cpu_seconds(os.getpid()) or 0.0) - self.own
        other = machine_busy_s() - self.busy - own - measured_cpu_s
        return max(0.0, other) / max(time.monotonic() - self.started, 1e-9)


async def wait_idle(max_cores: float, timeout_s: float) -> float:
    """Wait until the machine uses at most ``max_cores`` over 2 s; return the last figure."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = machine_busy_s()
        await asyncio.sleep(2)
        cores = (machine_busy_s() - before) / 2
        if cores <= max_cores or time.monotonic() > deadline:
            return cores


async def wait_for_taskmanagers(jm: client.JobManagerClient, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            overview = await jm.overview()
            if overview.taskmanagers >= count:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} TaskManagers did not register within {timeout_s} s")
        await asyncio.sleep(0.05)


class CheckpointLog:
    """All checkpoints of a job, merged from repeated polls of its (bounded) history."""

    def __init__(self) -> None:
        self.entries: dict[int, models.CheckpointEntry] = {}

    async def poll(self, jm: client.JobManagerClient, job_id: str) -> None:
        stats = await jm.checkpoints(job_id)
        for h in stats.history:
            if h.status != "IN_PROGRESS":
                self.entries[h.id] = h

    @property
    def completed(self) -> list[models.CheckpointEntry]:
        return [e for _, e in sorted(self.entries.items()) if e.status == "COMPLETED"]

    @property
    def failures(self) -> list[str]:
        """Reasons of failed checkpoints, without those subsumed by a newer one.

        A checkpoint still in flight when the final one is triggered (end of
        bounded input) is subsumed, which the coordinator does not count as a
        failure either.
        """
        return [
            f"{e.id}: {e.failure}"
            for _, e in sorted(self.entries.items())
            if e.status == "FAILED" and not (e.failure or "").startswith("subsumed")
        ]


def check_counts_exact(out: Path) -> tuple[bool, str]:
    """Every key's committed counts in ``out`` (``key count`` lines, as the keyed_sum test job
    writes) are exactly 1..n: no loss, no duplicate. Returns (exact, a one-line summary)."""
    counts: dict[int, list[int]] = defaultdict(list)
    lines = files.read_committed_lines(str(out))
    for line in lines:
        k, c = line.split()
        counts[int(k)].append(int(c))
    bad = sum(1 for seen in counts.values() if sorted(seen) != list(range(1, len(seen) + 1)))
    return bad == 0, f"{len(lines):,} committed rows over {len(counts):,} keys, {bad} keys wrong"


def start_emulator(script: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``script --serve-emulator WORKDIR`` (an operator benchmark serving the Kubernetes
    API emulator in a process of its own) and wait for its ``ready <url>`` line.

    Returns the process, its stdin and stdout pipes open (text), and the emulator's URL; its
    stderr goes to WORKDIR/emulator.log.
    """
    popen = subprocess.Popen(
        [sys.executable, script, "--serve-emulator", str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(workdir / "emulator.log", "wb"),  # noqa: SIM115 (the child owns it)
        text=True,
    )
    assert popen.stdout is not None
    line = popen.stdout.readline().split()
    if line[:1] != ["ready"]:
        popen.kill()
        raise BenchError(f"the emulator did not start; see {workdir / 'emulator.log'}")
    return popen, line[1]


def prometheus_samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by ``name{labels}``."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank, rounded); ``values`` must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def fmt_median_s(values: list[float | None]) -> str:
    """The median of the measured times, saying how many were never seen."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{median(known):.2f} s" + (
        f" ({len(values) - len(known)} not seen)" if len(known) < len(values) else ""
    )


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
