"""Helpers shared by the benchmarks: CPU time from /proc, cluster start, checkpoint stats."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "runtime"))

from streamjob_runtime.api import client, models  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


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
