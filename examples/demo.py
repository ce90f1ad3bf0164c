"""The streamjob demo: exactly-once clickstream counts through a TaskManager crash.

Starts an embedded local cluster (a JobManager and two TaskManagers, each its
own process), runs ``examples/clickstream.py`` at parallelism 2 with 1-second
checkpoints, SIGKILLs a TaskManager midway, lets the job recover from its
latest checkpoint, and checks the sink's committed output against the exact
expected counts.

    python examples/demo.py [--events N] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clickstream

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from streamjob_runtime.local import LocalCluster

JOB_FILE = str(Path(clickstream.__file__).resolve())


async def run_demo(events: int, rate: float, workdir: Path) -> bool:
    output = workdir / "output"
    with LocalCluster(workdir, taskmanagers=2, slots=1) as cluster:
        async with cluster.client() as jm:
            job_id = await jm.submit(
                models.JobSubmission(
                    entrypoint=JOB_FILE, args=[str(output), str(events), str(rate)], parallelism=2
                )
            )
            print(
                f"submitted clickstream job {job_id}: {events:,} clicks at {rate:,.0f}/s,"
                " parallelism 2, checkpoints every 1 s"
            )
            # Kill once the job is about halfway through and has completed checkpoints.
            halfway = time.monotonic() + events / rate / 2
            while True:
                stats = await jm.checkpoints(job_id)
                if stats.counts.completed >= 2 and time.monotonic() >= halfway:
                    break
                await asyncio.sleep(0.05)
            pid = cluster.kill_taskmanager(0)
            killed_at = time.monotonic()
            print(
                f"SIGKILL TaskManager pid {pid} midway, with"
                f" {stats.counts.completed} or more checkpoints completed"
            )
            recovered_at = None
            while True:
                job = await jm.job(job_id)
                if (
                    recovered_at is None
                    and job.restarts >= 1
                    and job.state is models.JobStatus.RUNNING
                ):
                    recovered_at = time.monotonic()
                    print(
                        f"recovered: running again from checkpoint {job.restored_from}"
                        f" {recovered_at - killed_at:.2f} s after the kill"
                    )
                if job.state.terminal:
                    break
                await asyncio.sleep(0.05)
            stats = await jm.checkpoints(job_id)
    expected = clickstream.expected_counts(events)
    rows = [json.loads(line) for line in files.read_committed_lines(str(output))]
    got = collections.Counter({(r["user"], r["window_start"]): r["clicks"] for r in rows})
    duplicates = len(rows) - len(got)
    exact = job.state is models.JobStatus.FINISHED and got == expected and duplicates == 0
    print()
    print("summary")
    print(f"  job state      {job.state.value}")
    print(f"  events         {events:,} clicks, {sum(got.values()):,} counted in the output")
    print(f"  windows        {len(rows):,} (user, 10 s window) rows, {duplicates} duplicates")
    print(f"  checkpoints    {stats.counts.completed} completed, {stats.counts.failed} failed")
    print(f"  restarts       {job.restarts}")
    print(f"  output exact   {'yes' if exact else 'NO'}")
    if not exact:
        missing = expected - got
        extra = got - expected
        print(
            f"  missing {sum(missing.values())} clicks, extra {sum(extra.values())} clicks;"
            f" logs in {workdir / 'logs'}"
        )
    return exact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--rate", type=float, default=50_000.0)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="streamjob-demo-"))
    ok = asyncio.run(run_demo(a.events, a.rate, workdir))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
