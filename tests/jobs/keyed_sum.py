"""Test job: a rolling keyed count whose exactly-once output is known in advance.

Event ``i`` belongs to key ``i % keys``; the rolling reduce emits, per event,
the key and how many events of that key it has seen.  Whatever the arrival
order across parallel splits, the exactly-once output for key ``k`` is
exactly the lines ``k 1`` .. ``k n_k``: a lost event removes a line, a
replayed one repeats a line, and state lost on restore restarts the count.

Arguments (env.args, as key=value): out, events, keys, rate, mode,
interval, restart (none|fixed:<attempts>:<ms>|rate:<max>:<interval ms>:<ms>),
fail_at (event index whose map raises, on every attempt), fail_from (every
event from that index on raises: a job that never gets past it), commit_delay
(seconds the sink's pre-commit blocks, to hold checkpoints open), retained,
sink_delay (seconds the sink sleeps per batch, a slow sink), sink_rate (records/s
a sink subtask writes at most, another slow sink), slow_subtask (only
that sink subtask is slow), source_parallelism, timeout and tolerable
(checkpoint timeout in ms and tolerable failed checkpoints), sum_uid (the
reduce's uid), ballast (bytes of incompressible state per key, kept by the
reduce: large state files), backend (state.backend.type), localdir
(state.backend.rocksdb.localdir), incremental
(execution.checkpointing.incremental), unaligned and aligned_timeout
(execution.checkpointing.unaligned and .aligned-checkpoint-timeout), capacity
(execution.channel-capacity), batch (execution.batch-size), rebalance (true: a
rebalance edge between the source and the map), local_recovery
(state.backend.local-recovery) and fail_once (``<event index>:<marker file>``: that
event's map raises once, in the attempt that creates the marker: a task failure the
TaskManagers survive), stamp (any value: each line ends with the wall-clock time the
sink wrote it, for measuring processing gaps).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from typing import Any

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.operators import base, sink


def parse(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


def expected(events: int, keys: int) -> Counter[tuple[int, int]]:
    seen = [0] * keys
    out: Counter[tuple[int, int]] = Counter()
    for i in range(events):
        k = i % keys
        seen[k] += 1
        out[(k, seen[k])] += 1
    return out


class SlowWriter(sink.SinkWriter):
    def __init__(
        self,
        inner: sink.SinkWriter,
        commit_delay: float,
        batch_delay: float,
        record_delay: float = 0.0,
    ) -> None:
        self.inner = inner
        self.commit_delay = commit_delay
        self.batch_delay = batch_delay
        self.record_delay = record_delay

    def write(self, values: list[Any]) -> None:
        if self.batch_delay or self.record_delay:
            time.sleep(self.batch_delay + self.record_delay * len(values))
        self.inner.write(values)

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        if self.commit_delay:
            time.sleep(self.commit_delay)
        return self.inner.prepare_commit(checkpoint_id)

    def commit(self, committables: list[Any]) -> None:
        self.inner.commit(committables)

    def discard_staged(self, keep: list[Any], restored_job_id: str | None) -> None:
        self.inner.discard_staged(keep, restored_job_id)

    def close(self) -> None:
        self.inner.close()


class SlowSink(sink.Sink):
    """The file sink, with a blocking pre-commit and/or a per-batch delay."""

    def __init__(
        self,
        inner: FileSink,
        commit_delay: float,
        batch_delay: float,
        slow_subtask: int | None,
        record_delay: float = 0.0,
    ) -> None:
        self.inner = inner
        self.commit_delay = commit_delay
        self.batch_delay = batch_delay
        self.slow_subtask = slow_subtask
        self.record_delay = record_delay

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        slow = self.slow_subtask is None or ctx.subtask_index == self.slow_subtask
        return SlowWriter(
            self.inner.create_writer(ctx),
            self.commit_delay,
            self.batch_delay if slow else 0.0,
            self.record_delay if slow else 0.0,
        )


def restart_strategy(spec: str) -> config.RestartStrategyConfig:
    kind, *params = spec.split(":")
    if kind == "default":
        return config.RestartStrategyConfig()
    if kind == "none":
        return config.no_restart()
    if kind == "fixed":
        return config.fixed_delay(int(params[0]), int(params[1]))
    if kind == "rate":
        return config.failure_rate(int(params[0]), int(params[1]), int(params[2]))
    raise ValueError(f"unknown restart spec {spec}")


_BALLAST: dict[int, bytes] = {}


def ballast(key: int, size: int) -> bytes:
    """The same incompressible bytes for ``key`` in every process (one copy per key)."""
    pad = _BALLAST.get(key)
    if pad is None:
        pad = _BALLAST[key] = random.Random(key).randbytes(size)
    return pad


def build(env: StreamExecutionEnvironment) -> None:
    a = parse(env.args)
    events = int(a.get("events", "60000"))
    keys = int(a.get("keys", "97"))
    rate = float(a["rate"]) if "rate" in a else None
    fail_at = int(a.get("fail_at", "-1"))
    fail_from = int(a.get("fail_from", "-1"))
    env.enable_checkpointing(
        int(a.get("interval", "200")),
        a.get("mode", "exactly-once"),
        retained=int(a.get("retained", "1")),
        timeout_ms=int(a.get("timeout", "600000")),
        tolerable_failures=int(a.get("tolerable", "0")),
    )
    options = {
        "state.backend.type": a.get("backend"),
        "state.backend.rocksdb.localdir": a.get("localdir"),
        "execution.checkpointing.incremental": a.get("incremental"),
        "execution.checkpointing.unaligned": a.get("unaligned"),
        "execution.checkpointing.aligned-checkpoint-timeout": a.get("aligned_timeout"),
        "execution.channel-capacity": a.get("capacity"),
        "execution.batch-size": a.get("batch"),
        "state.backend.local-recovery": a.get("local_recovery"),
    }
    env.config = config.apply_options(env.config, {k: v for k, v in options.items() if v})
    if "restart" in a:
        env.set_restart_strategy(restart_strategy(a["restart"]))
    else:
        env.set_restart_strategy(config.fixed_delay(2_147_483_647, int(a.get("delay", "100"))))

    fail_once, _, marker = a.get("fail_once", "-1:").partition(":")
    pad = int(a.get("ballast", "0"))

    def check(event: tuple[int, int]) -> tuple[Any, ...]:
        if event[1] == int(fail_once) and not os.path.exists(marker):
            with open(marker, "x"):
                pass
            raise RuntimeError(f"boom once at event {fail_once}")
        if event[1] == fail_at:
            raise RuntimeError(f"boom at event {fail_at}")
        if 0 <= fail_from <= event[1]:
            raise RuntimeError(f"boom at event {event[1]} (fail_from={fail_from})")
        return (event[0], 1, ballast(event[0], pad)) if pad else (event[0], 1)

    def stamped(r: tuple[int, int]) -> str:
        return f"{r[0]} {r[1]} {time.time():.4f}"  # when the sink wrote it: gaps show

    out = SlowSink(
        FileSink(a["out"], encoder=stamped if a.get("stamp") else lambda r: f"{r[0]} {r[1]}"),
        float(a.get("commit_delay", "0")),
        float(a.get("sink_delay", "0")),
        int(a["slow_subtask"]) if "slow_subtask" in a else None,
        1 / float(a["sink_rate"]) if "sink_rate" in a else 0.0,
    )
    source_parallelism = int(a.get("source_parallelism", "0")) or None
    numbers = (
        env.from_source(
            GeneratorSource(
                lambda i: (i % keys, i), count=events if events >= 0 else None, rate=rate
            ),
            name="numbers",
        )
        .uid("numbers")
        .set_parallelism(source_parallelism or env.parallelism)
    )
    if a.get("rebalance") == "true":
        numbers = numbers.rebalance()  # the map becomes a task of its own, fed round-robin
    (
        numbers.map(check)
        .uid("check")
        .set_parallelism(source_parallelism or env.parallelism)
        .key_by(lambda e: e[0])
        .reduce(
            (lambda x, y: (x[0], x[1] + y[1], x[2])) if pad else (lambda x, y: (x[0], x[1] + y[1]))
        )
        .uid(a.get("sum_uid", "sum"))
        .sink_to(out)
        .uid("sink")
    )
