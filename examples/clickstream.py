"""Clickstream counts: clicks per user per 10-second event-time window.

The generator replays the same click stream on every run (event i is a pure
function of i), so the exact result is known: see :func:`expected_counts`.
Output: one JSON line per (user, window) in the exactly-once file sink.

    streamjob run examples/clickstream.py --parallelism 2 -- OUTPUT_DIR [EVENTS] [RATE]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import AggregateFunction, TimeWindow
from streamjob_runtime.windows import TumblingEventTimeWindows, WatermarkStrategy

USERS = 500
EVENT_SPACING_MS = 5  # event time advances 5 ms per click
WINDOW_MS = 10_000
MAX_OUT_OF_ORDER_MS = 2_000
PAGES = ("/", "/search", "/product", "/cart", "/checkout")


def click(i: int) -> dict[str, Any]:
    """Click ``i``: a user, a page and an event time up to 1.5 s out of order."""
    jitter = (i * 2_654_435_761 % 301) * 5  # 0..1500 ms late, deterministic
    return {
        "user": f"user-{(i * 7_919) % USERS}",
        "page": PAGES[i % len(PAGES)],
        "ts": i * EVENT_SPACING_MS - jitter,
    }


class CountClicks(AggregateFunction[dict[str, Any], int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: dict[str, Any], accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def window_row(user: str, window: TimeWindow, count: int) -> dict[str, Any]:
    return {"user": user, "window_start": window.start, "clicks": count}


def expected_counts(events: int) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for i in range(events):
        c = click(i)
        counts[(c["user"], c["ts"] - c["ts"] % WINDOW_MS)] += 1
    return counts


def build(env: StreamExecutionEnvironment) -> None:
    output = env.args[0] if env.args else "clickstream-output"
    events = int(env.args[1]) if len(env.args) > 1 else 200_000
    rate = float(env.args[2]) if len(env.args) > 2 else 50_000.0
    env.enable_checkpointing(1_000)
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(
        MAX_OUT_OF_ORDER_MS
    ).with_timestamp_assigner(lambda c: c["ts"])
    (
        env.from_source(GeneratorSource(click, count=events, rate=rate), strategy, "clicks")
        .uid("clicks")
        .key_by(lambda c: c["user"])
        .window(TumblingEventTimeWindows.of(WINDOW_MS))
        .aggregate(CountClicks(), window_row)
        .uid("clicks-per-user-window")
        .sink_to(FileSink(output))
        .uid("sink")
    )
