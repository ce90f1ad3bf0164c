"""Where a record's time goes: py-spy profiles of the keyed count at parallelism 1 and 2.

Runs the job of ``bench/keyed_count.py`` (generator -> key_by -> keyed process
function with ValueState and a timer -> exactly-once file sink, checkpoints
every second) on a fresh local cluster per parallelism and samples every
engine process (the JobManager and each TaskManager) with ``py-spy record``
(a dev dependency) while the job runs.  For each process it prints the CPU
samples by stage of a record's path (source, key extraction and partitioning,
serialisation, TLS and sockets, the operator, state, timers, sink, checkpoint,
event loop) and the functions with the most self time, and it writes the
collapsed stacks (``<out>/<parallelism>-<process>.txt``: open them with
speedscope or ``flamegraph.pl``) and a flame graph SVG per process.

Samples are taken only while a thread runs Python (py-spy without ``--idle``),
so they approximate CPU time.  Sampling costs a few percent of CPU, so use
``bench/keyed_count.py`` for throughput figures and this script for shares.
A thread that waits for a core counts as running, so when the engine's processes
outnumber the idle cores (parallelism 2 on 2 cores, with py-spy beside them) the
shares lean towards whatever runs longest between waits.

``--accounting`` measures instead of sampling: the engine processes start with
``bench/accounting/sitecustomize.py``, which adds up the CPU time of each stage of a
record's path in the thread that runs it (the stage's own time, without the stages it
calls), and the script prints each stage in nanoseconds of CPU per event, summed over
the TaskManagers, for every parallelism, and the difference between the first
parallelism and each other: what the shuffle costs, stage by stage.  What no stage
explains is the event loop and the tasks' own loops (main thread), and other threads
(checkpoint uploads and fsyncs).

    uv run python bench/profile.py [--events 3000000] [--keys 100000]
        [--parallelism 1,2] [--rate 250] [--out bench-profile] [--top 25]
    uv run python bench/profile.py --accounting [--events 10000000] [--interval 0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster

JOB = str(common.BENCH_DIR / "jobs" / "keyed_count_job.py")

# Stages of a record's path, matched against each sample's frames from the leaf up:
# the first frame that matches names the stage (so a state access inside the user
# function counts as state, the user function's own code as operator).
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("checkpoint", ("_checkpoint", "snapshot", "checkpoint/", "_write_snapshot")),
    ("serialisation", ("pickle", "dumps", "loads", "wire.py", "msgspec")),
    ("tls + sockets", ("sslproto", "ssl.py", "selector_events", "_ssl", "transports")),
    ("network framing", ("framing", "read_frame", "RemoteChannelWriter", "_serve_data")),
    ("flow control", ("network.py:put", "InputChannel", "InputGate", "flush", "drain")),
    ("partitioning", ("key_groups", "keygroups", "RecordWriter.emit", "_split", "emit ")),
    ("timers", ("timer", "Timer")),
    ("state", ("state/", "value_state", "ValueState", "heap")),
    ("sink", ("sink", "FileSink", "files.py")),
    ("source", ("generator", "source", "emit_next")),
    ("operator", ("keyed_count_job", "process_batch", "operators/")),
    ("event loop", ("asyncio", "base_events", "events.py", "selectors")),
]


def stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in STAGES:
            if any(n in frame for n in needles):
                return name
    return "other"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    if not path.exists():
        return stacks
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(name: str, stacks: list[tuple[list[str], int]], top: int) -> None:
    total = sum(c for _, c in stacks)
    print(f"\n== {name}: {total} samples")
    if not total:
        return
    by_stage: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        by_stage[stage(frames)] += count
        self_time[frames[-1]] += count
    print("  by stage (first matching frame from the leaf up):")
    for s, c in by_stage.most_common():
        print(f"    {c / total:6.1%}  {s}")
    print(f"  top {top} functions by self time:")
    for f, c in self_time.most_common(top):
        print(f"    {c / total:6.1%}  {f}")


def start_spy(pid: int, out: Path, rate: int, fmt: str) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            fmt,
            "--nolineno",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def submit(
    jm: client.JobManagerClient, a: argparse.Namespace, workdir: Path, parallelism: int
) -> str:
    """Submit the keyed count with the script's options; its job id."""
    return await jm.submit(
        models.JobSubmission(
            entrypoint=JOB,
            args=[
                f"out={workdir / 'output'}",
                f"events={a.events}",
                f"keys={a.keys}",
                f"interval={a.interval}",
            ],
            parallelism=parallelism,
        )
    )


async def profile_one(parallelism: int, a: argparse.Namespace, out_dir: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="streamjob-profile-"))
    try:
        with LocalCluster(workdir, taskmanagers=parallelism, slots=1) as cluster:
            async with cluster.client() as jm:
                await common.wait_for_taskmanagers(jm, parallelism, 60)
                assert cluster.jobmanager is not None
                pids = {"jobmanager": cluster.jobmanager.popen.pid}
                for i, pid in enumerate(cluster.taskmanager_pids()):
                    pids[f"taskmanager-{i}"] = pid
                spies = []
                for name, pid in pids.items():
                    base = out_dir / f"p{parallelism}-{name}"
                    spies.append(
                        (name, base, start_spy(pid, base.with_suffix(".txt"), a.rate, "raw"))
                    )
                    spies.append(
                        (name, base, start_spy(pid, base.with_suffix(".svg"), a.rate, "flamegraph"))
                    )
                cpu = common.CpuMeter()
                cpu.sample(list(pids.values()))
                other = common.OtherLoad()
                job_id = await submit(jm, a, workdir, parallelism)
                started = time.monotonic()
                while True:
                    job = await jm.job(job_id)
                    cpu.sample(list(pids.values()))
                    if job.state.terminal:
                        break
                    await asyncio.sleep(0.1)
                wall = time.monotonic() - started
                for _, _, spy in spies:
                    spy.send_signal(signal.SIGINT)
                for name, _, spy in spies:
                    try:
                        _, err = spy.communicate(timeout=60)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                        err = b"timed out writing its output"
                    if spy.returncode not in (0, -signal.SIGINT) and err:
                        print(f"  py-spy on {name}: {err.decode(errors='replace')[-300:]}")
        print(
            f"\n#### parallelism {parallelism}: job {job.state.value}, {wall:.1f} s,"
            f" engine CPU {cpu.used_s:.1f} s ({a.events / cpu.used_s:,.0f} events/CPU-s under"
            f" sampling), other processes {other.cores(cpu.used_s):.2f} cores"
        )
        for name in pids:
            summarise(
                f"p={parallelism} {name}",
                read_collapsed(out_dir / f"p{parallelism}-{name}.txt"),
                a.top,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


ACCOUNTING = common.BENCH_DIR / "accounting"
OTHER_MAIN = "event loop, task loops, channels (main thread, no stage)"
OTHER_THREADS = "other threads (checkpoint uploads, fsync)"


def read_accounts(directory: Path) -> dict[int, dict[str, Any]]:
    """The latest totals each engine process wrote (see bench/accounting), by pid."""
    accounts = {}
    for path in directory.glob("*.json"):
        try:
            accounts[int(path.stem)] = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # being replaced: the next read has it
    return accounts


def stage_seconds(account: dict[str, Any]) -> dict[str, float]:
    """CPU seconds per stage of one process, the unexplained rest included."""
    stages = {name: float(v["cpu_s"]) for name, v in account["stages"].items()}
    stages[OTHER_MAIN] = account["main_thread_cpu_s"] - sum(stages.values())
    stages[OTHER_THREADS] = account["process_cpu_s"] - account["main_thread_cpu_s"]
    return stages


async def settled_accounts(directory: Path, pids: list[int]) -> dict[int, dict[str, Any]]:
    """Totals of every process in ``pids`` written after this call (they write every 0.2 s)."""
    since = time.time()
    while True:
        paths = [directory / f"{pid}.json" for pid in pids]
        if all(p.exists() and p.stat().st_mtime > since for p in paths):
            accounts = read_accounts(directory)
            if set(pids) <= set(accounts):
                return accounts
        await asyncio.sleep(0.05)


async def account_one(parallelism: int, a: argparse.Namespace) -> dict[str, float]:
    """Run the job at ``parallelism`` with CPU accounting: CPU seconds per stage during the
    job, summed over the TaskManagers, and the JobManager's whole process as one entry."""
    workdir = Path(tempfile.mkdtemp(prefix="streamjob-accounting-"))
    accounts_dir = workdir / "accounts"
    accounts_dir.mkdir()
    env = {"PYTHONPATH": str(ACCOUNTING), "STREAMJOB_ACCOUNTING": str(accounts_dir)}
    try:
        with LocalCluster(workdir, taskmanagers=parallelism, slots=1, extra_env=env) as cluster:
            async with cluster.client() as jm:
                await common.wait_for_taskmanagers(jm, parallelism, 60)
                assert cluster.jobmanager is not None
                jm_pid = cluster.jobmanager.popen.pid
                pids = [jm_pid, *cluster.taskmanager_pids()]
                before = await settled_accounts(accounts_dir, pids)
                job_id = await submit(jm, a, workdir, parallelism)
                while True:
                    job = await jm.job(job_id)
                    if job.state.terminal:
                        break
                    await asyncio.sleep(0.1)
                after = await settled_accounts(accounts_dir, pids)
        if job.state is not models.JobStatus.FINISHED:
            raise SystemExit(f"the job ended {job.state.value}: {job.failure_cause}")
        totals: collections.Counter[str] = collections.Counter()
        for pid in pids:
            if pid == jm_pid:
                cpu = after[pid]["process_cpu_s"] - before[pid]["process_cpu_s"]
                totals["JobManager (whole process)"] += cpu
                continue
            start = stage_seconds(before[pid])
            for name, value in stage_seconds(after[pid]).items():
                totals[name] += value - start.get(name, 0.0)
        return dict(totals)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_accounts(runs: dict[int, dict[str, float]], events: int) -> None:
    first = min(runs)
    others = [p for p in runs if p != first]
    names = sorted({n for r in runs.values() for n in r}, key=lambda n: -runs[first].get(n, 0.0))
    header = "".join(f"{f'p={p} ns/event':>16}" for p in runs)
    header += "".join(f"{f'p={p} - p={first}':>14}" for p in others)
    print(f"\n{'stage (CPU per event; TaskManagers summed)':58}{header}")
    for name in [*names, "total"]:
        per_event = {
            p: (sum(r.values()) if name == "total" else r.get(name, 0.0)) * 1e9 / events
            for p, r in runs.items()
        }
        row = "".join(f"{per_event[p]:16.1f}" for p in runs)
        row += "".join(f"{per_event[p] - per_event[first]:+14.1f}" for p in others)
        print(f"{name:58}{row}")
    total = {p: sum(r.values()) for p, r in runs.items()}
    for p in others:
        print(
            f"p={p} / p={first} events per CPU-second in these runs: {total[first] / total[p]:.0%}"
            " (the accounting adds some CPU per batch: bench/keyed_count.py has the figures)"
        )


async def main_async(a: argparse.Namespace) -> None:
    out_dir = Path(a.out)
    if a.accounting:
        print(
            f"CPU accounting, keyed count/sum: {a.events:,} events over {a.keys:,} keys,"
            f" checkpoints every {a.interval} ms (0: off); load average"
            f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
            flush=True,
        )
        runs = {p: await account_one(p, a) for p in a.parallelism}
        print_accounts(runs, a.events)
        return
    print(
        f"profiling keyed count/sum: {a.events:,} events over {a.keys:,} keys, checkpoints every"
        f" {a.interval} ms, py-spy at {a.rate} Hz; output in {out_dir}/ (load average"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        flush=True,
    )
    for p in a.parallelism:
        await profile_one(p, a, out_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=3_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--parallelism", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    p.add_argument("--interval", type=int, default=1000, help="checkpoint interval, ms (0: off)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", default="bench-profile", help="directory for stacks and flame graphs")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--accounting",
        action="store_true",
        help="CPU per stage measured in the engine processes instead of py-spy samples",
    )
    a = p.parse_args()
    if not a.accounting:
        Path(a.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
