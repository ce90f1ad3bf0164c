"""Benchmark job: keyed state of a chosen size, then a slow trickle that keeps it RUNNING.

The source emits the integers ``0, 1, 2, ...``; record ``i`` belongs to key
``i % keys``.  The first ``keys`` records (one per key) are emitted as fast as
the job takes them; after that the source is rate-limited to ``rate``
records/s in total, so the job never ends.  A :class:`KeyedProcessFunction`
keeps, per key, ``(count, payload)`` where ``payload`` is ``value_bytes``
incompressible bytes derived from the key (SHAKE-128), so the keyed state
holds about ``keys * value_bytes`` bytes.  Every record emits
``(key, count)``.  A record of an already-seen key checks that the key's
payload is intact (the function raises otherwise, failing the job), so a
state restored wrongly cannot go unnoticed.

The sink discards records.  With ``marks=<dir>``, each sink subtask writes
``<dir>/<job id>-<attempt>-<subtask>`` at its first write: JSON with the
wall-clock time of that write and the smallest count in that first batch (at
least 2 when the counts were restored from a savepoint, 1 when state was
lost), so a benchmark sees when output resumes and that the state came back.

Arguments (env.args, as key=value): keys (1000), value_bytes (1000),
rate (trickle records/s across all subtasks, 1000), marks.
No periodic checkpoints: savepoints are triggered explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

from streamjob_runtime.connectors.generator import GeneratorSplit
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import KeyedContext, KeyedProcessFunction
from streamjob_runtime.operators import base, sink, source


def parse(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


def payload(key: int, size: int) -> bytes:
    return hashlib.shake_128(key.to_bytes(8, "little")).digest(size)


class BurstReader(source.SourceReader):
    """Indices below ``burst`` as fast as possible, then ``rate`` records/s (all subtasks)."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self.splits: list[GeneratorSplit] = []
        self.trickle_started: float | None = None
        self.trickled = 0
        self._backoff = 0.001

    def add_splits(self, splits: list[Any]) -> None:
        self.splits.extend(GeneratorSplit(s.index, s.num_splits, s.next_index) for s in splits)

    def _take(
        self, splits: list[GeneratorSplit], per_split: int, limit: int | None
    ) -> list[source.SplitRecords]:
        out: list[source.SplitRecords] = []
        for split in splits:
            n = split.num_splits
            stop = split.next_index + per_split * n
            if limit is not None:
                stop = min(stop, limit)
            indices = range(split.next_index, stop, n)
            if indices:
                out.append(source.SplitRecords(split.index, list(indices)))
                split.next_index = indices[-1] + n
        return out

    def poll(self, max_records: int) -> list[source.SplitRecords] | None:
        if not self.splits:
            self._backoff = 0.05
            return []
        bursting = [s for s in self.splits if s.next_index < self.burst]
        if bursting:
            return self._take(bursting, max(1, max_records // len(bursting)), self.burst)
        now = time.monotonic()
        if self.trickle_started is None:
            self.trickle_started = now
        my_rate = self.rate * len(self.splits) / self.splits[0].num_splits
        allowed = int(my_rate * (now - self.trickle_started)) - self.trickled
        if allowed <= 0:
            self._backoff = min(0.05, max(0.001, (1 - allowed) / my_rate))
            return []
        per_split = max(1, min(max_records, allowed) // len(self.splits))
        out = self._take(self.splits, per_split, None)
        self.trickled += sum(len(part.values) for part in out)
        return out

    def backoff_s(self) -> float:
        return self._backoff

    def snapshot(self) -> list[Any]:
        return [GeneratorSplit(s.index, s.num_splits, s.next_index) for s in self.splits]


class BurstThenTrickle(source.Source):
    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate

    def create_splits(self, parallelism: int) -> list[Any]:
        return [GeneratorSplit(j, parallelism, j) for j in range(parallelism)]

    def create_reader(self, subtask_index: int, parallelism: int) -> source.SourceReader:
        return BurstReader(self.burst, self.rate)


class Payloads(KeyedProcessFunction):
    """Per key ``(count, payload)``; emits ``(key, count)`` per record."""

    def __init__(self, value_bytes: int) -> None:
        self.value_bytes = value_bytes

    def open(self, ctx: KeyedContext) -> None:
        self.state = ctx.value_state("payload")

    def process_element(self, value: Any, ctx: KeyedContext) -> list[tuple[int, int]]:
        key = ctx.current_key
        held = self.state.value()
        if held is None:
            count, data = 1, payload(key, self.value_bytes)
        else:
            count, data = held[0] + 1, held[1]
            if data != payload(key, self.value_bytes):
                raise RuntimeError(
                    f"the payload of key {key} is corrupt ({len(data)} bytes, count {held[0]})"
                )
        self.state.update((count, data))
        return [(key, count)]


class DiscardingWriter(sink.SinkWriter):
    def __init__(self, marker: str | None) -> None:
        self.marker = marker

    def write(self, values: list[Any]) -> None:
        if self.marker and values:
            mark = {"t": time.time(), "min_count": min(v[1] for v in values), "n": len(values)}
            tmp = self.marker + ".tmp"
            with open(tmp, "w") as f:
                json.dump(mark, f)
            os.replace(tmp, self.marker)
            self.marker = None

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        return []

    def commit(self, committables: list[Any]) -> None:
        pass


class DiscardingSink(sink.Sink):
    def __init__(self, marks: str | None) -> None:
        self.marks = marks

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        marker = None
        if self.marks:
            os.makedirs(self.marks, exist_ok=True)
            marker = os.path.join(self.marks, f"{ctx.job_id}-{ctx.attempt}-{ctx.subtask_index}")
        return DiscardingWriter(marker)


def build(env: StreamExecutionEnvironment) -> None:
    a = parse(env.args)
    keys = int(a.get("keys", "1000"))
    value_bytes = int(a.get("value_bytes", "1000"))
    rate = float(a.get("rate", "1000"))
    (
        env.from_source(BurstThenTrickle(keys, rate), name="numbers")
        .uid("numbers")
        .key_by(lambda i: i % keys)
        .process(Payloads(value_bytes))
        .uid("payloads")
        .sink_to(DiscardingSink(a.get("marks")))
        .uid("sink")
    )
