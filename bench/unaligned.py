"""Aligned vs unaligned vs aligned-timeout checkpoints under back-pressure, and without it.

Back-pressured: ``tests/jobs/keyed_sum.py`` unbounded, its source limited to
``--rate`` events/s and its sink (chained behind the keyed reduce) writing at most
a fifth of that (``--slowdown 5``), so the channels into the reduce are full.
The backlog an aligned barrier waits behind is set by the channel capacity
(``execution.channel-capacity``, in batches): each mode runs at each of
``--capacities``.  (A source stalled on its local channel sends no more to its
remote one, so the sockets' buffers do not fill here.)  Batches are ``--batch``
records: the sink sleeps per batch, which holds its TaskManager's event loop (as
a CPU-bound sink would), so big batches would slow every checkpoint step on that
TaskManager alike.  Per capacity, mode and run, over ``--seconds`` after
``--warmup`` seconds:

* checkpoint duration, p50 and max, and the number that failed;
* in-flight data stored per checkpoint (median);
* then a TaskManager SIGKILL, and what the restore replays: the age of the
  checkpoint it restores (from its trigger to the kill), the source records read
  again (source records_in at the kill minus at that trigger, interpolated from
  samples every 100 ms), and the channel-state records it replays (the tasks'
  ``channel_state_restored`` log lines);
* the committed output, checked exact (every key's counts are 1..n).

Not back-pressured: the same job bounded (``--events``), source and sink
unthrottled, checkpoints every 200 ms: records/s from RUNNING to FINISHED, aligned
and unaligned (unaligned checkpoints are not meant to cost throughput).

Every figure is the median over ``--runs`` runs with the spread (min-max); the
machine's load by other processes during each part is printed with it.

    uv run python bench/unaligned.py [--runs 2] [--rate 20000] [--slowdown 5] [--batch 100]
        [--capacities 16,64] [--warmup 10] [--seconds 15] [--interval 500]
        [--aligned-timeout 100] [--events 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster

JOB = str(common.REPO / "tests" / "jobs" / "keyed_sum.py")
PARALLELISM = 2


@dataclass
class Pressured:
    durations_ms: list[float] = field(default_factory=list)
    failed: int = 0
    persisted: list[int] = field(default_factory=list)
    restore_age_s: float | None = None
    reread: int | None = None
    replayed: int = 0
    exact: bool = False
    detail: str = ""
    other_cores: float = 0.0


def replayed_records(cluster: LocalCluster) -> int:
    total = 0
    for line in cluster.logs().splitlines():
        if "channel_state_restored" in line:
            with contextlib.suppress(ValueError, AttributeError):
                total += int(json.loads(line).get("records", 0))
    return total


def cluster_pids(cluster: LocalCluster) -> list[int]:
    jm = cluster.jobmanager
    return cluster.taskmanager_pids() + ([jm.popen.pid] if jm is not None else [])


async def wait_state(
    jm: client.JobManagerClient, job_id: str, done: object, timeout_s: float = 120
) -> models.JobDetails:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await jm.job(job_id)
        if done(job):  # type: ignore[operator]
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id}: {job.state.value} after {timeout_s} s")
        await asyncio.sleep(0.05)


async def submit(jm: client.JobManagerClient, args: dict[str, object]) -> str:
    """Submit keyed_sum with ``args`` once the cluster's TaskManagers registered; its job id."""
    await common.wait_for_taskmanagers(jm, PARALLELISM, 60)
    return await jm.submit(
        models.JobSubmission(
            entrypoint=JOB, args=[f"{k}={v}" for k, v in args.items()], parallelism=PARALLELISM
        )
    )


async def back_pressured(
    a: argparse.Namespace, capacity: int, options: dict[str, str], workdir: Path
) -> Pressured:
    result = Pressured()
    out = workdir / "out"
    sink_rate = a.rate / a.slowdown / PARALLELISM
    args = {
        "out": out,
        "events": -1,
        "keys": 97,
        "rate": a.rate,
        "sink_rate": sink_rate,
        "interval": a.interval,
        "retained": 3,
        "batch": a.batch,
        "capacity": capacity,
        **options,
    }
    # Heartbeats (which carry records_in) every 100 ms, for the source samples.
    cluster = LocalCluster(workdir, taskmanagers=PARALLELISM, slots=1, heartbeat_interval_ms=100)
    with cluster:
        async with cluster.client() as jm:
            job_id = await submit(jm, args)
            log = common.CheckpointLog()
            deadline = time.monotonic() + 120
            while not log.completed:
                await log.poll(jm, job_id)
                if time.monotonic() > deadline:
                    raise TimeoutError("no checkpoint completed within 120 s")
                await asyncio.sleep(0.2)
            await asyncio.sleep(a.warmup)
            await log.poll(jm, job_id)
            first = log.completed[-1].id
            load = common.OtherLoad()
            meter = common.CpuMeter()
            samples: list[tuple[float, int]] = []  # (wall ms, source records_in)
            end = time.monotonic() + a.seconds
            while time.monotonic() < end:
                job = await jm.job(job_id)
                samples.append((time.time() * 1000, job.vertices[0].records_in))
                meter.sample(cluster_pids(cluster))
                await log.poll(jm, job_id)
                await asyncio.sleep(0.1)
            result.other_cores = load.cores(meter.used_s)
            measured = [e for e in log.completed if e.id > first and e.kind == "checkpoint"]
            result.durations_ms = [e.duration_ms for e in measured]
            result.persisted = [e.persisted_data_bytes for e in measured]
            result.failed = len([f for f in log.failures if int(f.split(":")[0]) > first])
            # The kill: what does the restore replay?
            before = await jm.job(job_id)
            killed_ms = time.time() * 1000
            at_kill = before.vertices[0].records_in
            cluster.kill_taskmanager(1)
            job = await wait_state(
                jm,
                job_id,
                lambda j: j.attempt > before.attempt and j.state is models.JobStatus.RUNNING,
            )
            await log.poll(jm, job_id)
            restored = log.entries.get(job.restored_from or -1)
            if restored is not None and samples:
                times = [t for t, _ in samples]
                i = max(0, bisect.bisect_left(times, restored.trigger_timestamp) - 1)
                result.restore_age_s = (killed_ms - restored.trigger_timestamp) / 1000
                result.reread = at_kill - samples[i][1]
            await asyncio.sleep(2)  # let the restored attempt commit a checkpoint's output
            result.replayed = replayed_records(cluster)
            await jm.cancel(job_id)
            await wait_state(jm, job_id, lambda j: j.state.terminal)
    result.exact, result.detail = common.check_counts_exact(out)
    return result


async def throughput(
    a: argparse.Namespace, options: dict[str, str], workdir: Path
) -> tuple[float, float]:
    out = workdir / "out"
    args = {"out": out, "events": a.events, "keys": 97, "interval": 200, **options}
    cluster = LocalCluster(workdir, taskmanagers=PARALLELISM, slots=1)
    with cluster:
        async with cluster.client() as jm:
            job_id = await submit(jm, args)
            seen = await wait_state(
                jm, job_id, lambda j: j.state is models.JobStatus.RUNNING or j.state.terminal
            )
            if seen.state.terminal:
                raise RuntimeError(
                    f"the throughput job was {seen.state.value} before it was seen running:"
                    f" --events {a.events} is too few to measure; give more"
                )
            load, meter = common.OtherLoad(), common.CpuMeter()
            started = time.monotonic()
            while not (job := await jm.job(job_id)).state.terminal:
                meter.sample(cluster_pids(cluster))
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            if job.state is not models.JobStatus.FINISHED:
                raise RuntimeError(f"throughput run ended {job.state.value}: {job.failure_cause}")
    exact, detail = common.check_counts_exact(out)
    if not exact:
        raise RuntimeError(f"throughput run output not exact: {detail}")
    return a.events / elapsed, load.cores(meter.used_s)


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    med = fmt.format(common.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def main_async(a: argparse.Namespace) -> bool:
    modes = {
        "aligned": {"unaligned": "false"},
        "unaligned": {"unaligned": "true"},
        f"aligned-timeout {a.aligned_timeout} ms": {
            "unaligned": "true",
            "aligned_timeout": str(a.aligned_timeout),
        },
    }
    print(
        f"unaligned: keyed_sum at parallelism {PARALLELISM}, source {a.rate:,.0f} events/s, sink"
        f" {a.slowdown}x slower ({a.rate / a.slowdown:,.0f} records/s), checkpoints every"
        f" {a.interval} ms, batches of {a.batch}, channel capacities {a.capacities},"
        f" {a.seconds} s measured after {a.warmup} s per run, {a.runs} run(s);"
        f" {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[tuple[int, str], list[Pressured]] = {
        (c, m): [] for c in a.capacities for m in modes
    }
    ok = True
    for run in range(a.runs):
        for (capacity, mode), rs in results.items():
            workdir = Path(tempfile.mkdtemp(prefix="streamjob-unaligned-", dir=a.workdir))
            r = await back_pressured(a, capacity, modes[mode], workdir)
            rs.append(r)
            ok &= r.exact
            print(
                f"  run {run + 1} capacity {capacity} {mode}: {len(r.durations_ms)} checkpoints,"
                f" p50"
                f" {pct(r.durations_ms, 0.5):.0f} ms, max {max(r.durations_ms, default=0):.0f} ms,"
                f" {r.failed} failed; restore age {common.fmt_s(r.restore_age_s)}, source re-read"
                f" {r.reread}, channel-state replayed {r.replayed}; exact: {r.exact} ({r.detail});"
                f" other load {r.other_cores:.2f} cores",
                flush=True,
            )
            if r.exact and a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    tput: dict[str, list[float]] = {"aligned": [], "unaligned": []}
    tput_load: list[float] = []
    for _ in range(a.runs):
        for mode in tput:
            workdir = Path(tempfile.mkdtemp(prefix="streamjob-unaligned-", dir=a.workdir))
            rate, other = await throughput(a, modes[mode], workdir)
            tput[mode].append(rate)
            tput_load.append(other)
            print(f"  throughput {mode}: {rate:,.0f} records/s (other load {other:.2f} cores)")
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(
        f"back-pressured (sink {a.slowdown}x slower than the source), median (min-max) over"
        f" {a.runs} run(s)"
    )
    print(
        "| channel capacity | mode | checkpoint p50 | checkpoint max | failed"
        " | in-flight data per checkpoint"
        " | restored checkpoint age at kill | source records re-read | channel-state records"
        " replayed | exact |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for (capacity, mode), rs in results.items():
        stored = [r for r in rs if r.persisted]
        print(
            f"| {capacity} | {mode} | {spread([pct(r.durations_ms, 0.5) for r in rs])} ms"
            f" | {spread([max(r.durations_ms, default=0) for r in rs])} ms"
            f" | {spread([r.failed for r in rs])}"
            f" | {common.fmt_bytes(common.median([common.median(r.persisted) for r in stored]))}"
            f" | {spread([r.restore_age_s for r in rs if r.restore_age_s is not None], '{:.1f}')} s"
            f" | {spread([r.reread for r in rs if r.reread is not None])}"
            f" | {spread([r.replayed for r in rs])}"
            f" | {'yes' if all(r.exact for r in rs) else 'NO'} |"
        )
    loads = [r.other_cores for rs in results.values() for r in rs]
    print(f"other processes' load during the back-pressured runs: {spread(loads, '{:.2f}')} cores")
    print()
    print(f"no back-pressure: {a.events:,} events, checkpoints every 200 ms, records/s")
    print("| mode | throughput |")
    print("|---|---:|")
    for mode, values in tput.items():
        print(f"| {mode} | {spread(values)} |")
    ratio = common.median(tput["unaligned"]) / common.median(tput["aligned"])
    print(f"unaligned / aligned: {ratio:.2f}; other load {spread(tput_load, '{:.2f}')} cores")
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rate", type=float, default=20_000, help="source events/s")
    p.add_argument("--slowdown", type=float, default=5, help="sink is this many times slower")
    p.add_argument("--seconds", type=float, default=15, help="measured per back-pressured run")
    p.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    p.add_argument("--batch", type=int, default=100, help="records per batch")
    p.add_argument(
        "--capacities",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[16, 64],
        help="channel capacities (batches) to run each mode at",
    )
    p.add_argument("--interval", type=int, default=500, help="checkpoint interval, ms")
    p.add_argument("--aligned-timeout", type=int, default=100, help="ms")
    p.add_argument("--events", type=int, default=3_000_000, help="for the throughput runs")
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
