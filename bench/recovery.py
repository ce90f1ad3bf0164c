"""Recovery time after a TaskManager SIGKILL, at steady state.

Runs ``bench/jobs/keyed_count_job.py`` unbounded and rate-limited, emitting
one row per event into the exactly-once file sink, with checkpoints every
``--interval`` ms.  Once it is steady (checkpoints completing, output
flowing) it SIGKILLs a TaskManager running tasks and measures, from the
kill:

* running: the job is RUNNING again in a new attempt (all tasks deployed and
  restored from the latest checkpoint);
* output: the first record written by a sink subtask of the new attempt (the
  job's sink records the wall-clock time of each attempt's first write);
* metrics: the sink vertex's records_in of the new attempt, reported by
  TaskManager heartbeats (every ``--heartbeat`` ms), is above zero.

The local cluster, like a Kubernetes Deployment, starts a replacement
TaskManager process when one dies; ``--spare 1`` adds a standby TaskManager
so the restart need not wait for the replacement.  Each configuration runs
``--kills`` kills in one job; the job's committed output is then checked:
every key's counts must be exactly 1..n (nothing lost or duplicated).

    uv run python bench/recovery.py [--parallelism 2] [--kills 3] [--delays default,0]
        [--spare 0] [--rate 50000] [--keys 10000] [--interval 1000] [--heartbeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster

JOB = str(common.BENCH_DIR / "jobs" / "keyed_count_job.py")


@dataclass
class Kill:
    running_s: float | None
    output_s: float | None
    metrics_s: float | None
    restored_from: int | None


@dataclass
class ConfigResult:
    label: str
    kills: list[Kill] = field(default_factory=list)
    exact: bool = False
    detail: str = ""


def first_writes(out: Path, after_attempt: int) -> list[float]:
    """Wall-clock times of the first sink writes of attempts after ``after_attempt``."""
    times = []
    marks = out / ".first-write"
    if marks.is_dir():
        for m in marks.iterdir():
            attempt = int(m.name.split("-")[0])
            if attempt > after_attempt:
                with contextlib.suppress(ValueError):  # empty while being written
                    times.append(float(m.read_text()))
    return times


async def busy_taskmanager(cluster: LocalCluster, turn: int) -> int:
    """Index (in cluster.tms) of a TaskManager that is running tasks, by its CPU use."""
    pids = {i: tm.popen.pid for i, tm in enumerate(cluster.tms) if tm is not None}
    before = {i: common.cpu_seconds(pid) or 0.0 for i, pid in pids.items()}
    await asyncio.sleep(0.5)
    busy = sorted(i for i, pid in pids.items() if (common.cpu_seconds(pid) or 0.0) > before[i])
    if not busy:
        raise RuntimeError("no TaskManager is busy: is the job running?")
    return busy[turn % len(busy)]


async def wait_steady(
    jm: client.JobManagerClient, job_id: str, out: Path, attempt: int, timeout_s: float
) -> models.JobDetails:
    """The current attempt writes output and two checkpoints completed within it."""
    deadline = time.monotonic() + timeout_s
    completed_at_start: int | None = None
    while True:
        job = await jm.job(job_id)
        stats = await jm.checkpoints(job_id)
        if job.state is models.JobStatus.RUNNING and job.attempt >= attempt:
            if completed_at_start is None:
                completed_at_start = stats.counts.completed
            if stats.counts.completed >= completed_at_start + 2 and first_writes(
                out, job.attempt - 1
            ):
                return job
        if job.state.terminal:
            raise RuntimeError(f"job ended: {job.state.value}: {job.failure_cause}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job not steady within {timeout_s} s (state {job.state.value})")
        await asyncio.sleep(0.1)


async def measure_kill(
    jm: client.JobManagerClient, cluster: LocalCluster, job_id: str, out: Path, turn: int
) -> Kill:
    index = await busy_taskmanager(cluster, turn)
    before = (await jm.job(job_id)).attempt
    killed_at = time.time()
    cluster.kill_taskmanager(index)
    running = output = metrics = None
    restored_from = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and None in (running, output, metrics):
        job = await jm.job(job_id)
        now = time.time()
        if job.attempt > before and job.state is models.JobStatus.RUNNING:
            if running is None:
                running = now - killed_at
                restored_from = job.restored_from
            if metrics is None and job.vertices[-1].records_in > 0:
                metrics = now - killed_at
        if output is None:
            writes = first_writes(out, before)
            if writes:
                output = min(writes) - killed_at
        if job.state.terminal:
            break
        await asyncio.sleep(0.01)
    return Kill(running, output, metrics, restored_from)


async def run_config(a: argparse.Namespace, delay: str, spare: int, workdir: Path) -> ConfigResult:
    label = f"restart delay {'default (1000 ms)' if delay == 'default' else delay + ' ms'}"
    if spare:
        label += f", {spare} standby TaskManager"
    result = ConfigResult(label)
    options = {}
    if delay != "default":
        options = {
            "restart-strategy.type": "fixed-delay",
            "restart-strategy.fixed-delay.delay": delay,
        }
    out = workdir / "output"
    cluster = LocalCluster(
        workdir,
        taskmanagers=a.parallelism + spare,
        slots=1,
        heartbeat_interval_ms=a.heartbeat,
        heartbeat_timeout_ms=max(10 * a.heartbeat, 5_000),
    )
    with cluster:
        async with cluster.client() as jm:
            await common.wait_for_taskmanagers(jm, a.parallelism + spare, 60)
            job_id = await jm.submit(
                models.JobSubmission(
                    entrypoint=JOB,
                    args=[
                        f"out={out}",
                        "events=-1",
                        f"keys={a.keys}",
                        f"rate={a.rate}",
                        f"interval={a.interval}",
                        "emit=each",
                        "mark=1",
                    ],
                    parallelism=a.parallelism,
                    config=options,
                )
            )
            attempt = 1
            for turn in range(a.kills):
                await wait_steady(jm, job_id, out, attempt, 120)
                kill = await measure_kill(jm, cluster, job_id, out, turn)
                result.kills.append(kill)
                print(
                    f"  {label}, kill {turn + 1}: running again after {fmt(kill.running_s)},"
                    f" first output after {fmt(kill.output_s)}, sink records_in after"
                    f" {fmt(kill.metrics_s)} (restored checkpoint {kill.restored_from})",
                    flush=True,
                )
                attempt = (await jm.job(job_id)).attempt
            await wait_steady(jm, job_id, out, attempt, 120)
            await jm.cancel(job_id)
            await wait_terminal(jm, job_id)
    result.exact, result.detail = common.check_counts_exact(out)
    return result


async def wait_terminal(jm: client.JobManagerClient, job_id: str) -> None:
    for _ in range(600):
        if (await jm.job(job_id)).state.terminal:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not end within 30 s")


fmt = common.fmt_s
med = common.fmt_median_s


async def main_async(a: argparse.Namespace) -> bool:
    print(
        f"recovery: keyed count at {a.rate:,.0f} events/s over {a.keys:,} keys, parallelism"
        f" {a.parallelism}, exactly-once checkpoints every {a.interval} ms, heartbeats every"
        f" {a.heartbeat} ms; {a.kills} TaskManager SIGKILLs per configuration",
        flush=True,
    )
    results = []
    for spare in a.spare:
        for delay in a.delays:
            workdir = Path(tempfile.mkdtemp(prefix="streamjob-recovery-", dir=a.workdir))
            r = await run_config(a, delay, spare, workdir)
            results.append(r)
            print(f"    output exact after {len(r.kills)} kills: {r.exact} ({r.detail})")
            if r.exact and a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"    logs and output kept in {workdir}")
    print()
    print(f"median time from SIGKILL (over {a.kills} kills)")
    print("| configuration | running again | first output | sink records_in > 0 | exact |")
    print("|---|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r.label} | {med([k.running_s for k in r.kills])}"
            f" | {med([k.output_s for k in r.kills])}"
            f" | {med([k.metrics_s for k in r.kills])} | {'yes' if r.exact else 'NO'} |"
        )
    return all(r.exact for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--delays", type=lambda s: s.split(","), default=["default", "0"])
    p.add_argument("--spare", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    p.add_argument("--rate", type=float, default=50_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--interval", type=int, default=1000, help="checkpoint interval, ms")
    p.add_argument("--heartbeat", type=int, default=200, help="heartbeat interval, ms")
    p.add_argument(
        "--workdir",
        default=None,
        type=common.directory,
        help="keep every run's directory under this one",
    )
    a = p.parse_args()
    sys.exit(0 if asyncio.run(main_async(a)) else 1)


if __name__ == "__main__":
    main()
