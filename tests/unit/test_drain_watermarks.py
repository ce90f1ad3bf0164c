"""Event time in a task with several input channels when one is drained (``stop --drain``).

A drained source sends the end-of-input watermark but does not end: the job is
restored from the savepoint and the source resumes where it stopped.  The
downstream task must therefore not let its other channels run event time (and
the watermark it saves) past the drained channel's last real watermark, or the
restored job drops that source's on-time records as late.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import AggregateFunction
from streamjob_runtime.operators import base, window
from streamjob_runtime.taskmanager import task
from streamjob_runtime.windows import TumblingEventTimeWindows, WatermarkStrategy
from tests.unit.test_barrier_alignment import downstream_task, running, until

MAX = base.MAX_WATERMARK


class Count(AggregateFunction[Any, int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: Any, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def window_task(tmp_path: Path) -> task.Task:
    """The window -> sink subtask of a job whose two source subtasks feed it."""
    env = StreamExecutionEnvironment().set_parallelism(2)
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(0).with_timestamp_assigner(
        lambda v: v
    )
    (
        env.from_source(GeneratorSource(lambda i: i, 10), strategy)
        .key_by(lambda v: v % 2)
        .window(TumblingEventTimeWindows.of(10_000))
        .aggregate(Count())
        .set_parallelism(1)
        .sink_to(FileSink(str(tmp_path / "out")))
        .set_parallelism(1)
    )
    return downstream_task(env, tmp_path)


def head(t: task.Task) -> window.WindowOperator:
    assert isinstance(t.head, window.WindowOperator)
    return t.head


def test_a_drained_channel_holds_event_time_and_the_saved_watermark_at_its_last_watermark(
    tmp_path: Path,
) -> None:
    t = window_task(tmp_path)
    gate = t.gate
    assert gate is not None

    async def scenario() -> None:
        ch0, ch1 = gate.channels
        await ch0.put(("b", [1_000], [1_000]))
        await ch0.put(("w", 1_000))
        await ch1.put(("w", 1_000))
        await until(lambda: head(t).watermark == 1_000, "event time at 1000")
        # Source 0 is drained: it stops at event time 1000 and sends the end watermark.
        await ch0.put(("w", MAX))
        # Source 1 has not been drained yet and reads on, far ahead.
        await ch1.put(("b", [25_001], [25_001]))
        await ch1.put(("w", 25_000))
        await ch1.put(("b", [25_002], [25_002]))
        await until(lambda: t.records_in == 3, "the records of both channels")
        # Before the fix, 25000 was the task's event time: window [0, 10000) fired
        # and 25000 was saved, so source 0's records from 1001 on were late after a restore.
        assert head(t).watermark == 1_000
        assert head(t).saved_watermark == 1_000
        await ch1.put(("w", MAX))  # source 1 drained too: every window fires
        await until(lambda: head(t).watermark == MAX, "the end watermark")
        assert head(t).windows == {}
        snapshot = head(t).snapshot_state(1)
        assert snapshot.operator == [1_000]

    asyncio.run(running(t, scenario))


def test_a_channel_that_ended_lets_the_others_drive_event_time(tmp_path: Path) -> None:
    t = window_task(tmp_path)
    gate = t.gate
    assert gate is not None

    async def scenario() -> None:
        ch0, ch1 = gate.channels
        await ch0.put(("w", 1_000))
        await ch0.put(("w", MAX))
        await ch0.put(("e",))  # bounded source 0 has read everything
        await ch1.put(("b", [25_001], [25_001]))
        await ch1.put(("w", 25_000))
        await until(lambda: head(t).watermark == 25_000, "event time driven by channel 1")
        assert head(t).saved_watermark == 25_000

    asyncio.run(running(t, scenario))
