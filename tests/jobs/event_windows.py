"""Test job: event-time tumbling window counts over skewed splits, with late events.

The generator has ``SPLITS`` splits; record ``i`` is position ``i // SPLITS`` of
split ``i % SPLITS``.  Event time within a split rises ``STEP_MS`` per position,
and each split starts ``skew`` ms of event time after the previous one, so
splits that share a reader sit at different event times (as Kafka partitions
do).  From position ``late_from`` on, every ``LATE_EVERY``-th position of a
split is a late event: its timestamp is ``LATE_BY_MS`` in the past, behind any
watermark the job has emitted, so an exactly-once run drops every one of them.

Output: one JSON line ``{"key", "start", "count"}`` per (key, window); the exact
result of a run with or without failures and rescaling is :func:`expected`.

Arguments (key=value): out, positions (per split), skew, late_from (-1: no
late events), rate, interval.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink, read_committed_lines
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import AggregateFunction, TimeWindow
from streamjob_runtime.windows import TumblingEventTimeWindows, WatermarkStrategy

SPLITS = 4
KEYS = 5
STEP_MS = 10
WINDOW_MS = 1_000
OUT_OF_ORDERNESS_MS = 100
LATE_EVERY = 7
LATE_BY_MS = 10_000_000

Event = tuple[int, int]  # (key, timestamp)


def event(i: int, skew: int, late_from: int) -> Event:
    split, position = i % SPLITS, i // SPLITS
    key = (position * 3 + split) % KEYS
    ts = position * STEP_MS + split * skew
    if is_late(position, late_from):
        ts -= LATE_BY_MS
    elif position % 2:
        ts -= OUT_OF_ORDERNESS_MS // 2  # out of order, within the bound: on time
    return (key, ts)


def is_late(position: int, late_from: int) -> bool:
    return 0 <= late_from <= position and position % LATE_EVERY == 0


def expected(positions: int, skew: int, late_from: int) -> Counter[tuple[int, int, int]]:
    """The exactly-once rows: every on-time event counted once, late events dropped."""
    counts: Counter[tuple[int, int]] = Counter()
    for i in range(positions * SPLITS):
        if is_late(i // SPLITS, late_from):
            continue
        key, ts = event(i, skew, late_from)
        counts[(key, ts - ts % WINDOW_MS)] += 1
    return Counter((key, start, n) for (key, start), n in counts.items())


def committed(out: str) -> Counter[tuple[int, int, int]]:
    rows = (json.loads(line) for line in read_committed_lines(out))
    return Counter((r["key"], r["start"], r["count"]) for r in rows)


class Count(AggregateFunction[Event, int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: Event, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def row(key: int, window: TimeWindow, count: int) -> dict[str, Any]:
    return {"key": key, "start": window.start, "count": count}


def build(env: StreamExecutionEnvironment) -> None:
    a = dict(arg.split("=", 1) for arg in env.args)
    positions = int(a.get("positions", "3000"))
    skew = int(a.get("skew", "3000"))
    late_from = int(a.get("late_from", "-1"))
    env.enable_checkpointing(int(a.get("interval", "200")))
    env.set_restart_strategy(config.fixed_delay(2_147_483_647, 100))
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(
        OUT_OF_ORDERNESS_MS
    ).with_timestamp_assigner(lambda e: e[1])
    source = GeneratorSource(
        lambda i: event(i, skew, late_from),
        count=positions * SPLITS,
        rate=float(a.get("rate", "3000")),
        splits=SPLITS,
    )
    (
        env.from_source(source, strategy, "events")
        .uid("events")
        .key_by(lambda e: e[0])
        .window(TumblingEventTimeWindows.of(WINDOW_MS))
        .aggregate(Count(), row)
        .uid("counts")
        .sink_to(FileSink(a["out"]))
        .uid("sink")
    )
