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

    uv run python bench/profile.py [--events 3000000] [--keys 100000]
        [--parallelism 1,2] [--rate 250] [--out bench-profile] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

from streamjob_runtime.api import models
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
                job_id = await jm.submit(
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


async def main_async(a: argparse.Namespace) -> None:
    out_dir = Path(a.out)
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
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
