"""Savepoint and restore duration against keyed state of 1, 10 and 100 MB, and the downtime of
stop-with-savepoint -> restore.

Runs ``bench/jobs/state_size_job.py`` at parallelism 2 on a local cluster of a
JobManager and two one-slot TaskManagers (heartbeats every 100 ms, so the REST
metrics are at most ~100 ms old).  The job builds ``keys`` entries of
``--value-bytes`` incompressible bytes each (``keys * value_bytes`` is the
state size), then trickles ``--rate`` records/s so it keeps running; every
record emits one row into a discarding sink.  Periodic checkpoints are off, so
only the benchmark's savepoints run.  Savepoints go to the local disk and a
restore reads files just written (from the page cache, most likely).

For each size, once every key's entry is built:

* savepoint: ``--savepoints`` plain savepoints, each timed from the trigger
  request to the status COMPLETED (polled every 10 ms), and the size of the
  savepoint directory on disk; MB/s is that size over the median time;
* ``--restores`` cycles of stop-with-savepoint, then the job submitted again
  with ``savepoint_path`` (each cycle stops the job the previous one restored).
  Seconds from the stop request: the savepoint COMPLETED; the old job FINISHED
  (its slots free; the new job is submitted then); the restored job RUNNING
  (every task deployed with its state loaded: "restore" is submit -> RUNNING);
  its first output, the downtime (the sink records the wall-clock time of each
  subtask's first write, which can precede the moment the benchmark sees
  RUNNING); the sink vertex's records_in above zero in ``GET /jobs/{id}``.

Correctness: a record of a known key checks that key's payload in the restored
state (the job fails otherwise); the restored job's first counts must be >= 2
(counts restored, not restarted); and every stop savepoint must be as large as
the first savepoint (no key lost).

    uv run python bench/savepoints.py [--quick] [--sizes 1,10,100] [--value-bytes 1000]
        [--rate 1000] [--savepoints 5] [--restores 5] [--workdir DIR]

``--quick`` measures 1 and 10 MB only.  The jobs end with a stop-with-savepoint,
never a cancel: see the comment at the end of :func:`measure`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import common

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster
from streamjob_runtime.state import objectstore, storage

JOB = str(common.BENCH_DIR / "jobs" / "state_size_job.py")
POLL_S = 0.01
Check = Callable[[], Awaitable[bool]]
MB = 1_000_000


class BenchError(RuntimeError):
    pass


@dataclass
class Cycle:
    """One stop-with-savepoint -> restore; seconds from the stop request."""

    stop_savepoint_s: float = 0.0  # -> the savepoint COMPLETED
    finished_s: float = 0.0  # -> the old job FINISHED (its slots free)
    submit_at_s: float = 0.0  # -> the restored job submitted
    running_s: float = 0.0  # -> the restored job RUNNING
    first_output_s: float = 0.0  # -> the restored job's first sink write (the downtime)
    metrics_s: float = 0.0  # -> the sink's records_in > 0 in the REST job details
    min_count: int = 0  # smallest count in the restored job's first sink batches
    savepoint_bytes: int = 0  # the stop's savepoint on disk

    @property
    def restore_s(self) -> float:
        """Submit -> RUNNING: every task deployed and its state restored."""
        return self.running_s - self.submit_at_s


@dataclass
class SizeResult:
    mb: int
    keys: int
    build_s: float = 0.0
    disk_bytes: int = 0
    savepoint_s: list[float] = field(default_factory=list)
    savepoint_reported_ms: list[float] = field(default_factory=list)
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def savepoint_median_s(self) -> float:
        return common.median(self.savepoint_s)

    def median(self, attribute: str) -> float:
        return common.median([getattr(c, attribute) for c in self.cycles])


def disk_size(location: str | Path) -> int:
    """Bytes stored under a savepoint directory (a local path or an s3:// prefix)."""
    directory = storage.location(str(location))
    if storage.is_remote(directory):
        return sum(storage.size(directory / name) for name in storage.names(directory))
    assert isinstance(directory, Path)
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


async def wait_until(what: str, timeout_s: float, check: Check) -> float:
    """Poll the async predicate ``check`` every POLL_S; return the monotonic time it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def job_state(jm: client.JobManagerClient, job_id: str) -> models.JobDetails:
    details = await jm.job(job_id)
    if details.state in (models.JobStatus.FAILED, models.JobStatus.CANCELED) or details.restarts:
        raise BenchError(
            f"job {job_id} is {details.state.value} after {details.restarts} restarts:"
            f" {details.failure_cause}"
        )
    return details


async def savepoint(
    jm: client.JobManagerClient, job_id: str, stop: bool
) -> tuple[models.SavepointInfo, float]:
    """Trigger (or stop with) a savepoint; its info and the monotonic time it completed."""
    request = await (jm.stop(job_id) if stop else jm.trigger_savepoint(job_id))
    while True:
        info = await jm.savepoint_status(job_id, request)
        if info.status is not models.SavepointStatus.IN_PROGRESS:
            done = time.monotonic()
            break
        await asyncio.sleep(POLL_S)
    if info.status is not models.SavepointStatus.COMPLETED or info.location is None:
        raise BenchError(f"savepoint of {job_id} failed: {info.failure_cause}")
    return info, done


def first_writes(marks: Path, job_id: str) -> list[dict[str, float]]:
    found = []
    if marks.is_dir():
        for m in marks.glob(f"{job_id}-*"):
            if m.name.endswith(".tmp"):
                continue
            found.append(json.loads(m.read_text()))
    return found


async def stop_and_restore(
    jm: client.JobManagerClient, job_id: str, submission: models.JobSubmission, marks: Path
) -> tuple[str, str, Cycle]:
    """Stop ``job_id`` with a savepoint and submit it again from that savepoint.

    Returns the restored job's id, the savepoint's path and the timings.
    """
    cycle = Cycle()
    stop_wall = time.time()
    stop_mono = time.monotonic()
    info, done = await savepoint(jm, job_id, stop=True)
    assert info.location is not None
    cycle.stop_savepoint_s = done - stop_mono
    cycle.savepoint_bytes = disk_size(info.location)
    finished = finished_job(jm, job_id)
    cycle.finished_s = await wait_until("the stopped job to finish", 60, finished) - stop_mono
    submit_mono = time.monotonic()
    restored = await jm.submit(submission.model_copy(update={"savepoint_path": info.location}))
    cycle.submit_at_s = submit_mono - stop_mono

    async def running() -> bool:
        return (await job_state(jm, restored)).state is models.JobStatus.RUNNING

    cycle.running_s = await wait_until("the restored job to run", 120, running) - stop_mono

    async def output_in_metrics() -> bool:
        return (await job_state(jm, restored)).vertices[-1].records_in > 0

    seen = await wait_until("restored output in the metrics", 30, output_in_metrics)
    cycle.metrics_s = seen - stop_mono

    async def both_marks() -> bool:
        return len(first_writes(marks, restored)) >= 2

    await wait_until("both restored sink subtasks to write", 30, both_marks)
    writes = first_writes(marks, restored)
    cycle.first_output_s = min(w["t"] for w in writes) - stop_wall
    cycle.min_count = int(min(w["min_count"] for w in writes))
    if cycle.min_count < 2:
        raise BenchError(
            f"the restored job {restored} counted from {cycle.min_count}: its state was lost"
        )
    return restored, info.location, cycle


async def measure(
    jm: client.JobManagerClient, mb: int, a: argparse.Namespace, workdir: Path
) -> SizeResult:
    keys: int = mb * MB // a.value_bytes
    result = SizeResult(mb, keys)
    marks = workdir / "marks"
    job_args = [f"keys={keys}", f"value_bytes={a.value_bytes}", f"rate={a.rate}", f"marks={marks}"]
    submission = models.JobSubmission(entrypoint=JOB, args=job_args, parallelism=2)
    job_id = await jm.submit(submission)
    started = time.monotonic()

    async def built() -> bool:
        details = await job_state(jm, job_id)
        if details.state is not models.JobStatus.RUNNING:
            return False
        return details.vertices[-1].records_in >= keys

    await wait_until(f"{keys:,} keys of state", 120, built)
    result.build_s = time.monotonic() - started
    await asyncio.sleep(0.3)  # trickling now: let the burst's garbage settle

    for _ in range(a.savepoints):
        triggered = time.monotonic()
        info, done = await savepoint(jm, job_id, stop=False)
        result.savepoint_s.append(done - triggered)
        assert info.location is not None
        result.disk_bytes = disk_size(info.location)
        storage.delete_tree(storage.location(info.location))
        await asyncio.sleep(0.2)
    stats = await jm.checkpoints(job_id)
    result.savepoint_reported_ms = [
        e.duration_ms
        for e in sorted(stats.history, key=lambda e: e.id)
        if e.kind == "savepoint" and e.status == "COMPLETED"
    ]

    for _ in range(a.restores):
        job_id, location, cycle = await stop_and_restore(jm, job_id, submission, marks)
        result.cycles.append(cycle)
        shutil.rmtree(location, ignore_errors=True)
        # Every restored job saves all the state again: a lost key would shrink the savepoint.
        if cycle.savepoint_bytes < 0.99 * result.disk_bytes:
            raise BenchError(
                f"a stop savepoint holds {cycle.savepoint_bytes:,} bytes, the first"
                f" {result.disk_bytes:,}: state was lost in a restore"
            )
        await asyncio.sleep(0.5)  # the restored job checks payloads as the trickle goes on
        details = await job_state(jm, job_id)
        if details.state is not models.JobStatus.RUNNING or details.restored_from is None:
            raise BenchError(f"restored job is {details.state.value}, from {details.restored_from}")

    # End the last job with a stop-with-savepoint rather than a cancel: on Python 3.11 a
    # TaskManager can hang forever cancelling a task whose input gate waits with a timeout
    # (InputGate.next: asyncio.wait_for swallows a cancellation that arrives together with
    # a record), as this job's process function (it may have timers) does.  After a stop the
    # sources are silent, so no record races the cancellation.
    final, _ = await savepoint(jm, job_id, stop=True)
    await wait_until("the last job to finish", 30, finished_job(jm, job_id))
    assert final.location is not None
    final_bytes = disk_size(final.location)
    shutil.rmtree(final.location, ignore_errors=True)
    if final_bytes < 0.99 * result.disk_bytes:
        raise BenchError(
            f"the last restored job saved {final_bytes:,} bytes of state, the first"
            f" {result.disk_bytes:,}: state was lost in a restore"
        )
    return result


def finished_job(jm: client.JobManagerClient, job_id: str) -> Check:
    async def finished() -> bool:
        details = await jm.job(job_id)
        if details.state.terminal and details.state is not models.JobStatus.FINISHED:
            raise BenchError(f"the stopped job {job_id} ended {details.state.value}")
        return details.state is models.JobStatus.FINISHED

    return finished


def print_tables(results: list[SizeResult], a: argparse.Namespace) -> None:
    print()
    print(
        f"keyed state of N MB = N*{MB // a.value_bytes:,} keys x {a.value_bytes:,} bytes,"
        f" parallelism 2 on 2 TaskManagers (one slot each), trickle {a.rate:,.0f} records/s;"
        f" medians of {a.savepoints} savepoints and {a.restores} stop -> restore cycles"
    )
    print()
    print("| state MB | on disk MB | savepoint s | MB/s | restore s | downtime s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        disk_mb = r.disk_bytes / MB
        print(
            f"| {r.mb} | {disk_mb:.1f} | {r.savepoint_median_s:.2f} |"
            f" {disk_mb / r.savepoint_median_s:.0f} | {r.median('restore_s'):.2f} |"
            f" {r.median('first_output_s'):.2f} |"
        )
    print()
    print("stop-with-savepoint -> restore, seconds from the stop request (medians):")
    print()
    print(
        "| state MB | savepoint completed | old job FINISHED | restored job RUNNING |"
        " first output (downtime) | output in REST metrics |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.mb} | {r.median('stop_savepoint_s'):.2f} | {r.median('finished_s'):.2f} |"
            f" {r.median('running_s'):.2f} | {r.median('first_output_s'):.2f} |"
            f" {r.median('metrics_s'):.2f} |"
        )
    print()
    for r in results:
        reported = ", ".join(f"{ms / 1000:.2f}" for ms in r.savepoint_reported_ms)
        runs = ", ".join(f"{s:.2f}" for s in r.savepoint_s)
        downtimes = ", ".join(f"{c.first_output_s:.2f}" for c in r.cycles)
        restores = ", ".join(f"{c.restore_s:.2f}" for c in r.cycles)
        counts = min(c.min_count for c in r.cycles)
        print(
            f"{r.mb} MB: {r.keys:,} keys built in {r.build_s:.1f} s; savepoints {runs} s"
            f" (JobManager: {reported} s); restores {restores} s; downtimes {downtimes} s;"
            f" restored counts >= {counts}"
        )


S3_BUCKET = "bench"


@contextlib.contextmanager
def moto_s3() -> Iterator[None]:
    """An in-process S3 API (moto's server) that this process and the cluster's use."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    objectstore.reset()
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    try:
        yield
    finally:
        server.stop()


async def run(a: argparse.Namespace, workdir: Path) -> list[SizeResult]:
    results = []
    with contextlib.ExitStack() as stack:
        s3 = {}
        if a.s3:
            s3 = {
                "checkpoint_dir": f"s3://{S3_BUCKET}/checkpoints",
                "savepoint_dir": f"s3://{S3_BUCKET}/savepoints",
            }
            stack.enter_context(moto_s3())
        cluster = stack.enter_context(
            LocalCluster(
                workdir / "cluster",
                taskmanagers=2,
                slots=1,
                heartbeat_interval_ms=100,
                heartbeat_timeout_ms=5000,
                **s3,  # type: ignore[arg-type]
            )
        )
        async with cluster.client() as jm:
            for mb in a.sizes:
                began = time.monotonic()
                r = await measure(jm, mb, a, workdir)
                print(
                    f"{mb} MB: savepoint {r.savepoint_median_s:.2f} s"
                    f" ({r.disk_bytes / MB:.1f} MB on disk), restore {r.median('restore_s'):.2f} s,"
                    f" downtime {r.median('first_output_s'):.2f} s"
                    f" [{time.monotonic() - began:.0f} s]",
                    flush=True,
                )
                results.append(r)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 and 10 MB only")
    p.add_argument("--sizes", default="1,10,100", help="state sizes in MB")
    p.add_argument("--value-bytes", type=int, default=1000, help="state bytes per key")
    p.add_argument("--rate", type=float, default=1000.0, help="trickle records/s")
    p.add_argument("--savepoints", type=int, default=5, help="plain savepoints per size")
    p.add_argument("--restores", type=int, default=5, help="stop -> restore cycles per size")
    p.add_argument("--workdir", default=None, type=common.directory, help="kept when given")
    p.add_argument(
        "--s3", action="store_true", help="checkpoints and savepoints on S3 (moto's server)"
    )
    a = p.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")]
    if a.quick:
        a.sizes = [s for s in a.sizes if s <= 10]
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="streamjob-bench-savepoints-"))
    started = time.monotonic()
    try:
        results = asyncio.run(run(a, workdir))
    except BenchError as e:
        print(f"FAILED: {e}; logs in {workdir / 'cluster' / 'logs'}", file=sys.stderr)
        sys.exit(1)
    print_tables(results, a)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if a.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
