"""Operators in isolation, with a recording output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamjob_runtime import functions, windows
from streamjob_runtime.connectors import files, generator
from streamjob_runtime.operators import base, keyed, window


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[Any, int | None]] = []
        self.watermarks: list[int] = []

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        ts = timestamps or [None] * len(values)  # type: ignore[list-item]
        self.records.extend(zip(values, ts, strict=True))

    def emit_watermark(self, watermark: int) -> None:
        self.watermarks.append(watermark)


def ctx(index: int = 0, parallelism: int = 1, attempt: int = 1) -> base.OperatorContext:
    return base.OperatorContext("op", index, parallelism, 128, attempt, "job")


class Count(functions.AggregateFunction[Any, int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: Any, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def window_op(assigner: windows.WindowAssigner) -> tuple[window.WindowOperator, Recorder]:
    op = window.WindowOperator(lambda v: v[0], assigner, Count(), lambda k, w, n: (k, w.start, n))
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    return op, out


def test_tumbling_windows_fire_on_the_watermark_and_drop_late_records() -> None:
    op, out = window_op(windows.TumblingEventTimeWindows.of(10))
    op.process_batch([("a", 1), ("a", 2), ("b", 3), ("a", 12)], [1, 2, 3, 12])
    op.process_watermark(8)
    assert out.records == []
    op.process_watermark(9)
    assert sorted(out.records) == [(("a", 0, 2), 9), (("b", 0, 1), 9)]
    op.process_batch([("a", 4)], [4])  # window [0, 10) already fired
    assert op.late_records == 1
    op.process_watermark(base.MAX_WATERMARK)
    assert out.records[-1] == (("a", 10, 1), 19)


def test_sliding_windows_assign_each_record_to_every_covering_window() -> None:
    op, out = window_op(windows.SlidingEventTimeWindows.of(10, 5))
    op.process_batch([("a", 0)], [7])
    op.process_watermark(base.MAX_WATERMARK)
    assert sorted(r[0] for r in out.records) == [("a", 0, 1), ("a", 5, 1)]


def test_window_state_survives_a_snapshot_and_restore() -> None:
    op, _ = window_op(windows.TumblingEventTimeWindows.of(10))
    op.process_batch([("a", 1), ("b", 2)], [1, 2])
    snap = op.snapshot_state(1)
    op2, out2 = window_op(windows.TumblingEventTimeWindows.of(10))
    op2.initialize_state(base.RestoredState(1, "job", snap.keyed, [[]], 1))
    op2.process_watermark(base.MAX_WATERMARK)
    assert sorted(r[0] for r in out2.records) == [("a", 0, 1), ("b", 0, 1)]


class Timers(functions.KeyedProcessFunction):
    def open(self, ctx: functions.KeyedContext) -> None:
        self.seen = ctx.value_state("seen", 0)
        self.items = ctx.list_state("items")
        self.by_kind = ctx.map_state("kinds")

    def process_element(self, value: Any, ctx: functions.KeyedContext) -> list[Any]:
        self.seen.update((self.seen.value() or 0) + 1)
        self.items.add(value[1])
        self.by_kind.put(value[1] % 2, True)
        ctx.timer_service.register_event_time_timer(100)
        return []

    def on_timer(self, timestamp: int, ctx: functions.KeyedContext) -> list[Any]:
        return [(ctx.current_key, self.seen.value(), self.items.get(), sorted(self.by_kind.keys()))]


def test_keyed_process_function_state_and_event_time_timers() -> None:
    op = keyed.ProcessOperator(lambda v: v[0], Timers())
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    op.process_batch([("a", 1), ("b", 2), ("a", 3)], [1, 2, 3])
    op.process_watermark(99)
    assert out.records == []
    op.process_watermark(100)
    assert sorted(r[0] for r in out.records) == [("a", 2, [1, 3], [1]), ("b", 1, [2], [0])]
    op.process_watermark(200)  # a timer fires once
    assert len(out.records) == 2


def test_generator_reader_resumes_exactly_after_its_snapshot() -> None:
    src = generator.GeneratorSource(lambda i: i, count=100)
    splits = src.create_splits(2)
    reader = src.create_reader(0, 1)
    reader.add_splits(splits)
    first = reader.poll(10)
    state = reader.snapshot()
    rest_a = []
    while (batch := reader.poll(7)) is not None:
        rest_a.extend(batch)
    replay = src.create_reader(0, 1)
    replay.add_splits(state)
    rest_b = []
    while (batch := replay.poll(13)) is not None:
        rest_b.extend(batch)
    assert first is not None
    assert sorted(rest_a) == sorted(rest_b)
    assert sorted(first + rest_a) == list(range(100))


def test_file_sink_stages_until_commit_and_discards_stale_attempts(tmp_path: Path) -> None:
    sink = files.FileSink(str(tmp_path))
    w = sink.create_writer(ctx(attempt=1))
    w.write([{"a": 1}])
    committables = w.prepare_commit(1)
    assert files.read_committed_lines(str(tmp_path)) == []
    w.write([{"a": 2}])  # staged after checkpoint 1: never committed
    w.close()
    w2 = sink.create_writer(ctx(attempt=2))
    w2.commit(committables)
    w2.commit(committables)  # idempotent, as a restore may commit again
    w2.discard_staged(committables, "job")
    assert files.read_committed_lines(str(tmp_path)) == ['{"a":1}']
    assert not list((tmp_path / ".staging" / "op").iterdir())


def test_file_source_resumes_from_its_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    src = files.FileSource(str(path))
    reader = src.create_reader(0, 1)
    reader.add_splits(src.create_splits(1))
    assert reader.poll(4) == [f"line {i}" for i in range(4)]
    state = reader.snapshot()
    reader.close()
    again = src.create_reader(0, 1)
    again.add_splits(state)
    assert again.poll(100) == [f"line {i}" for i in range(4, 10)]
    assert again.poll(100) is None


def test_timer_queue_keeps_one_timer_as_an_int_and_several_as_a_set() -> None:
    from streamjob_runtime.state import heap

    backend = heap.KeyedStateBackend()
    timers = heap.TimerQueue(backend, "t")
    timers.register("a", 5)
    timers.register("a", 5)  # at most one per (key, time)
    timers.register("b", 3)
    timers.register("b", 7)
    assert backend.tables["t"] == {"a": 5, "b": {3, 7}}
    timers.delete("b", 7)
    assert backend.tables["t"] == {"a": 5, "b": 3}
    restored = heap.KeyedStateBackend()
    restored.restore({"t": {"a": 5, "b": {3, 9}}})  # both forms restore
    again = heap.TimerQueue(restored, "t")
    assert list(again.pop_due(6)) == [(3, "b"), (5, "a")]
    assert restored.tables["t"] == {"b": 9}
    assert list(again.pop_due(100)) == [(9, "b")]
    assert restored.tables["t"] == {}
