"""Benchmark job: a keyed running (count, sum) whose final state is known exactly.

Event ``i`` is ``(i % keys, i // keys)``.  A :class:`KeyedProcessFunction`
keeps ``(count, sum)`` per key in a ``ValueState`` and registers one
event-time timer at the end of time; bounded input ends with the MAX
watermark, so each key's timer fires once at the end and emits one row
``"key count sum"`` to the exactly-once file sink.  Key ``k`` ends with
``count`` = the number of its events and ``sum = 0 + 1 + ... + (count - 1)``.

Arguments (env.args, as key=value): out, events (10000000; < 0: unbounded),
keys (100000), interval (checkpoint interval in ms, 0 = off), mode
(exactly-once), rate (records/s across all subtasks; default unlimited),
emit (``end``: one row per key at the end; ``each``: also ``"key count"``
for every event, so output flows continuously), mark (1: each sink subtask
writes ``<out>/.first-write/<attempt>-<subtask>`` holding the wall-clock time
of its first write, so a benchmark sees when output resumes after a restart).
Restart strategies come from the submission's config options.
"""

from __future__ import annotations

import os
import time
from typing import Any

from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import KeyedContext, KeyedProcessFunction
from streamjob_runtime.operators import base, sink

END_OF_TIME = 2**62


def parse(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


class CountSum(KeyedProcessFunction):
    """Per key: (count, sum of values); one output row when event time ends."""

    def __init__(self, emit_each: bool) -> None:
        self.emit_each = emit_each

    def open(self, ctx: KeyedContext) -> None:
        self.acc = ctx.value_state("count-sum")

    def process_element(self, value: Any, ctx: KeyedContext) -> list[str] | None:
        acc = self.acc.value()
        if acc is None:
            acc = (1, value[1])
            ctx.timer_service.register_event_time_timer(END_OF_TIME)
        else:
            acc = (acc[0] + 1, acc[1] + value[1])
        self.acc.update(acc)
        return [f"{value[0]} {acc[0]}"] if self.emit_each else None

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> list[str]:
        count, total = self.acc.value()  # type: ignore[misc]
        return [f"{ctx.current_key} {count} {total}"]


class FirstWriteMarker(sink.SinkWriter):
    """Delegates to ``inner``; records the wall-clock time of the attempt's first write."""

    def __init__(self, inner: sink.SinkWriter, marker: str) -> None:
        self.inner = inner
        self.marker = marker

    def write(self, values: list[Any]) -> None:
        self.inner.write(values)
        if self.marker:
            now = time.time()
            os.makedirs(os.path.dirname(self.marker), exist_ok=True)
            with open(self.marker, "w") as f:
                f.write(repr(now))
            self.marker = ""

    def prepare_commit(self, checkpoint_id: int) -> list[Any]:
        return self.inner.prepare_commit(checkpoint_id)

    def commit(self, committables: list[Any]) -> None:
        self.inner.commit(committables)

    def discard_staged(self, keep: list[Any], restored_job_id: str | None) -> None:
        self.inner.discard_staged(keep, restored_job_id)

    def close(self) -> None:
        self.inner.close()


class MarkedFileSink(sink.Sink):
    def __init__(self, inner: FileSink, directory: str) -> None:
        self.inner = inner
        self.directory = directory

    def create_writer(self, ctx: base.OperatorContext) -> sink.SinkWriter:
        marker = os.path.join(self.directory, ".first-write", f"{ctx.attempt}-{ctx.subtask_index}")
        return FirstWriteMarker(self.inner.create_writer(ctx), marker)


def build(env: StreamExecutionEnvironment) -> None:
    a = parse(env.args)
    events = int(a.get("events", "10000000"))
    keys = int(a.get("keys", "100000"))
    interval = int(a.get("interval", "0"))
    rate = float(a["rate"]) if "rate" in a else None
    if interval > 0:
        env.enable_checkpointing(interval, a.get("mode", "exactly-once"))

    def event(i: int) -> tuple[int, int]:
        return (i % keys, i // keys)

    out: sink.Sink = FileSink(a["out"], encoder=str)
    if a.get("mark") == "1":
        out = MarkedFileSink(FileSink(a["out"], encoder=str), a["out"])
    (
        env.from_source(
            GeneratorSource(event, count=events if events >= 0 else None, rate=rate),
            name="events",
        )
        .uid("events")
        .key_by(lambda e: e[0])
        .process(CountSum(a.get("emit", "end") == "each"))
        .uid("count-sum")
        .sink_to(out)
        .uid("sink")
    )
