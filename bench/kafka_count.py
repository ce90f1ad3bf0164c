"""Kafka -> key_by -> count -> Kafka throughput per CPU-second, against generator -> files.

Starts Tansu (``.tools/bin/tansu``, see scripts/tools.sh; in-memory storage, a
fresh broker per run), produces ``--events`` JSON records ``[key, i]`` into
topic ``in`` (4 partitions), then runs ``bench/jobs/kafka_count_job.py`` at
parallelism 1 on an embedded LocalCluster with 1 s exactly-once checkpoints in
these configurations: generator -> file sink (exactly-once), Kafka -> Kafka
with the sink at-least-once, Kafka -> Kafka exactly-once (transactions).  It
prints wall-clock events/s, events per CPU-second of the TaskManager process
(the connector's cost; the broker's CPU is shown apart), and checks that the
output has one record per event (read back from ``out`` or the files).

    uv run python bench/kafka_count.py [--events 200000] [--keys 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import common
import confluent_kafka as ck
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from streamjob_runtime.local import LocalCluster

JOB = str(common.BENCH_DIR / "jobs" / "kafka_count_job.py")
TANSU = common.REPO / ".tools" / "bin" / "tansu"
PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_tansu(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not TANSU.is_file():
        raise SystemExit("tansu is missing: run scripts/tools.sh")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            *(str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url),
            *("--storage-engine", "memory://tansu/"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fill(bootstrap: str, events: int, keys: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [NewTopic("in", PARTITIONS, 1), NewTopic("out", PARTITIONS, 1)]
    for future in admin.create_topics(topics).values():
        future.result(timeout=30)
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for i in range(events):
        while True:
            try:
                producer.produce("in", json.dumps([i % keys, i]).encode(), partition=i % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def count_output(bootstrap: str) -> int:
    consumer = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-check", "enable.auto.commit": False}
    )
    tps = [ck.TopicPartition("out", p, ck.OFFSET_BEGINNING) for p in range(PARTITIONS)]
    consumer.assign(tps)
    n, idle_since = 0, time.monotonic()
    while time.monotonic() - idle_since < 3:
        got = [m for m in consumer.consume(5000, 0.5) if m.error() is None]
        if got:
            n += len(got)
            idle_since = time.monotonic()
    consumer.close()
    return n


async def run(args: list[str], workdir: Path, broker_pid: int | None) -> tuple[float, float, float]:
    """(wall s, TaskManager CPU s, broker CPU s) of one job run."""
    with LocalCluster(workdir, taskmanagers=1, slots=1) as cluster:
        async with cluster.client() as jm:
            await common.wait_for_taskmanagers(jm, 1, 60)
            tm, broker = common.CpuMeter(), common.CpuMeter()
            tm.sample(cluster.taskmanager_pids())
            if broker_pid:
                broker.sample([broker_pid])
            job_id = await jm.submit(models.JobSubmission(entrypoint=JOB, args=args, parallelism=1))
            started = time.monotonic()
            while True:
                job = await jm.job(job_id)
                tm.sample(cluster.taskmanager_pids())
                if broker_pid:
                    broker.sample([broker_pid])
                if job.state.terminal:
                    break
                await asyncio.sleep(0.05)
            wall = time.monotonic() - started
            if job.state is not models.JobStatus.FINISHED:
                raise SystemExit(f"job {job.state.value}: {job.failure_cause}")
    return wall, tm.used_s, broker.used_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--keys", type=int, default=1_000)
    a = p.parse_args()
    events = a.events - a.events % PARTITIONS
    rows = []
    for name, source, sink, guarantee in [
        ("generator -> count -> files (exactly-once)", "generator", "file", ""),
        ("Kafka -> count -> Kafka (at-least-once)", "kafka", "kafka", "at-least-once"),
        ("Kafka -> count -> Kafka (exactly-once)", "kafka", "kafka", "exactly-once"),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            broker, bootstrap = start_tansu(work / "tansu.log")
            try:
                fill(bootstrap, events, a.keys)
                job_args = [
                    *(f"source={source}", f"sink={sink}", f"guarantee={guarantee}"),
                    *(f"bootstrap={bootstrap}", f"stop={events // PARTITIONS}"),
                    *(f"events={events}", f"keys={a.keys}", f"out={work / 'out'}"),
                ]
                broker_pid = broker.pid if source == "kafka" else None
                wall, tm_cpu, broker_cpu = asyncio.run(run(job_args, work / "cluster", broker_pid))
                if sink == "kafka":
                    written = count_output(bootstrap)
                else:
                    written = len(files.read_committed_lines(str(work / "out")))
            finally:
                broker.kill()
                broker.wait()
        row = (name, events / wall, events / tm_cpu, broker_cpu, written == events)
        rows.append(row)
        print(
            f"{name}: {wall:.1f} s, {row[1]:,.0f} events/s, TaskManager CPU {tm_cpu:.1f} s"
            f" ({row[2]:,.0f} events/CPU-s), broker CPU {broker_cpu:.1f} s,"
            f" output {written} of {events}",
            flush=True,
        )
    print()
    print(
        "| pipeline (p=1, 1 s checkpoints) | events/s | events/TaskManager-CPU-s"
        " | broker CPU s | output complete |"
    )
    print("|---|---:|---:|---:|---|")
    for name, rate, per_cpu, broker_cpu, ok in rows:
        print(
            f"| {name} | {rate:,.0f} | {per_cpu:,.0f} | {broker_cpu:.1f}"
            f" | {'yes' if ok else 'NO'} |"
        )


if __name__ == "__main__":
    main()
