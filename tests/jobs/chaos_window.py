"""Chaos-suite job: event-time windows with late events, and keyed state with timers.

Event ``i`` is ``(key, ts, late, i)`` (:func:`event`). Most events are on time: their
event time trails ``i * SPACING_MS`` by at most ``JITTER_MS``, within the watermark's
bounded out-of-orderness (``OUT_OF_ORDER_MS``). Every ``LATE_EVERY``-th event from
``LATE_FROM`` on is late by far more than a window (``LATE_BY_MS``): once watermarks
flow, a window operator must drop it.

Two branches read the one source (uid ``events``):

- ``windows``: per key, tumbling ``WINDOW_MS`` event-time windows counting the on-time
  and the late events apart; one row ``"key window_start on_time late"`` per fired
  window to the exactly-once file sink ``<out>/windows``. The on-time counts are exact
  whatever fails (:func:`expected_windows`); a late event is either dropped or, when a
  window operator has no watermark yet (after a restore watermarks start again), counted
  in the ``late`` column: never in ``on_time``.
- ``counts``: a keyed process function keeping a ``ValueState`` count and a
  ``MapState`` of on-time/late counts per key, emitting ``"key n"`` for the key's
  ``n``-th event and, from an event-time timer at the end of time, one final row
  ``"key total late"`` (bounded input ends with the MAX watermark) to ``<out>/counts``.
  Exact: the lines ``k 1 .. k n_k`` once each, and one final row per key
  (:func:`expected_counts`).

Arguments (env.args, as key=value): out, events (-1: unbounded), rate (records/s across
all subtasks), splits (generator splits; default the first parallelism), interval
(checkpoint interval in ms), delay (restart delay in ms).
"""

from __future__ import annotations

from collections import Counter

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import (
    AggregateFunction,
    KeyedContext,
    KeyedProcessFunction,
    TimeWindow,
)
from streamjob_runtime.windows import TumblingEventTimeWindows, WatermarkStrategy

KEYS = 31
SPACING_MS = 5  # event time advances 5 ms per event
JITTER_MS = 1_500  # on-time events trail by at most this
OUT_OF_ORDER_MS = 2_000  # the watermark's bound (> JITTER_MS)
WINDOW_MS = 10_000
LATE_EVERY = 50
LATE_FROM = 2_000  # after the first watermarks
LATE_BY_MS = OUT_OF_ORDER_MS + 3 * WINDOW_MS  # behind any watermark once they flow
END_OF_TIME = 2**62

Event = tuple[int, int, bool, int]


def parse(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


def is_late(i: int) -> bool:
    return i >= LATE_FROM and i % LATE_EVERY == LATE_EVERY - 1


def event(i: int) -> Event:
    """Event ``i``: (key, event time, late, i); a pure function of ``i``."""
    key = (i * 7_919) % KEYS
    if is_late(i):
        return (key, i * SPACING_MS - LATE_BY_MS, True, i)
    jitter = (i * 2_654_435_761 % 301) * 5  # 0..1500 ms, deterministic
    return (key, i * SPACING_MS - jitter, False, i)


def expected_windows(events: int) -> Counter[tuple[int, int]]:
    """(key, window start) -> on-time events: the on-time column of the window rows."""
    out: Counter[tuple[int, int]] = Counter()
    for i in range(events):
        key, ts, late, _ = event(i)
        if not late:
            out[(key, ts - ts % WINDOW_MS)] += 1
    return out


def expected_counts(events: int) -> tuple[Counter[tuple[int, int]], Counter[tuple[int, int, int]]]:
    """The ``"key n"`` lines, and the final ``"key total late"`` rows, as multisets."""
    totals: Counter[int] = Counter()
    lates: Counter[int] = Counter()
    lines: Counter[tuple[int, int]] = Counter()
    for i in range(events):
        key, _, late, _ = event(i)
        totals[key] += 1
        lates[key] += late
        lines[(key, totals[key])] += 1
    finals = Counter((k, totals[k], lates[k]) for k in totals)
    return lines, finals


class OnTimeAndLate(AggregateFunction[Event, tuple[int, int], tuple[int, int]]):
    def create_accumulator(self) -> tuple[int, int]:
        return (0, 0)

    def add(self, value: Event, accumulator: tuple[int, int]) -> tuple[int, int]:
        on_time, late = accumulator
        return (on_time, late + 1) if value[2] else (on_time + 1, late)

    def get_result(self, accumulator: tuple[int, int]) -> tuple[int, int]:
        return accumulator


def window_row(key: int, window: TimeWindow, result: tuple[int, int]) -> str:
    return f"{key} {window.start} {result[0]} {result[1]}"


class RollingCount(KeyedProcessFunction):
    """Per key: a ValueState count, a MapState of on-time/late counts, a final timer."""

    def open(self, ctx: KeyedContext) -> None:
        self.count = ctx.value_state("count", 0)
        self.kinds = ctx.map_state("kinds")

    def process_element(self, value: Event, ctx: KeyedContext) -> list[str]:
        n = int(self.count.value() or 0) + 1
        if n == 1:
            ctx.timer_service.register_event_time_timer(END_OF_TIME)
        self.count.update(n)
        kind = "late" if value[2] else "on_time"
        self.kinds.put(kind, (self.kinds.get(kind) or 0) + 1)
        return [f"{value[0]} {n}"]

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> list[str]:
        return [f"{ctx.current_key} {self.count.value()} {self.kinds.get('late') or 0}"]


def build(env: StreamExecutionEnvironment) -> None:
    a = parse(env.args)
    events = int(a.get("events", "30000"))
    rate = float(a["rate"]) if "rate" in a else None
    splits = int(a["splits"]) if "splits" in a else None
    env.enable_checkpointing(int(a.get("interval", "200")), "exactly-once")
    env.set_restart_strategy(config.fixed_delay(2_147_483_647, int(a.get("delay", "100"))))
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(
        OUT_OF_ORDER_MS
    ).with_timestamp_assigner(lambda e: e[1])
    source = env.from_source(
        GeneratorSource(event, count=events if events >= 0 else None, rate=rate, splits=splits),
        strategy,
        "events",
    ).uid("events")
    (
        source.key_by(lambda e: e[0])
        .window(TumblingEventTimeWindows.of(WINDOW_MS))
        .aggregate(OnTimeAndLate(), window_row)
        .uid("windows")
        .sink_to(FileSink(f"{a['out']}/windows", encoder=str))
        .uid("windows-sink")
    )
    (
        source.key_by(lambda e: e[0])
        .process(RollingCount())
        .uid("counts")
        .sink_to(FileSink(f"{a['out']}/counts", encoder=str))
        .uid("counts-sink")
    )
