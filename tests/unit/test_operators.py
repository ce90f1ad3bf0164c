"""Operators in isolation, with a recording output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamjob_runtime import config, functions, windows
from streamjob_runtime.connectors import files, generator
from streamjob_runtime.operators import base, keyed, source, window


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[Any, int | None]] = []
        self.watermarks: list[int] = []

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        ts = timestamps or [None] * len(values)  # type: ignore[list-item]
        self.records.extend(zip(values, ts, strict=True))

    def emit_watermark(self, watermark: int) -> None:
        self.watermarks.append(watermark)


def ctx(
    index: int = 0,
    parallelism: int = 1,
    attempt: int = 1,
    backend: config.StateBackendConfig | None = None,
) -> base.OperatorContext:
    return base.OperatorContext(
        "op", index, parallelism, 128, attempt, "job", backend or config.StateBackendConfig()
    )


@pytest.fixture(params=["hashmap", "rocksdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> config.StateBackendConfig:
    """Each keyed state test runs on both state backends (RocksDB under ``tmp_path``)."""
    return config.StateBackendConfig(config.StateBackendType(request.param), str(tmp_path))


class Count(functions.AggregateFunction[Any, int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: Any, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def window_op(
    assigner: windows.WindowAssigner,
    backend: config.StateBackendConfig | None = None,
    restored: base.RestoredState | None = None,
) -> tuple[window.WindowOperator, Recorder]:
    op = window.WindowOperator(lambda v: v[0], assigner, Count(), lambda k, w, n: (k, w.start, n))
    out = Recorder()
    op.setup(ctx(backend=backend) if backend else ctx(), out)
    op.initialize_state(restored)
    op.open()
    return op, out


def test_tumbling_windows_fire_on_the_watermark_and_drop_late_records(
    backend: config.StateBackendConfig,
) -> None:
    op, out = window_op(windows.TumblingEventTimeWindows.of(10), backend)
    op.process_batch([("a", 1), ("a", 2), ("b", 3), ("a", 12)], [1, 2, 3, 12])
    op.process_watermark(8)
    assert out.records == []
    op.process_watermark(9)
    assert sorted(out.records) == [(("a", 0, 2), 9), (("b", 0, 1), 9)]
    op.process_batch([("a", 4)], [4])  # window [0, 10) already fired
    assert op.late_records == 1
    op.process_watermark(base.MAX_WATERMARK)
    assert out.records[-1] == (("a", 10, 1), 19)


def test_sliding_windows_assign_each_record_to_every_covering_window(
    backend: config.StateBackendConfig,
) -> None:
    op, out = window_op(windows.SlidingEventTimeWindows.of(10, 5), backend)
    op.process_batch([("a", 0)], [7])
    op.process_watermark(base.MAX_WATERMARK)
    assert sorted(r[0] for r in out.records) == [("a", 0, 1), ("a", 5, 1)]


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_window_state_survives_a_snapshot_and_restore_into_either_backend(
    backend: config.StateBackendConfig, after: str, tmp_path: Path
) -> None:
    op, _ = window_op(windows.TumblingEventTimeWindows.of(10), backend)
    op.process_batch([("a", 1), ("b", 2), ("a", 3), ("a", 15)], [1, 2, 3, 15])
    if backend.type is config.StateBackendType.ROCKSDB:
        assert op.windows == {}  # the accumulators are in RocksDB, one entry per window
        assert op.rocks is not None
        assert sorted(op.rocks.all_keys()) == [("a", 10), ("a", 20), ("b", 10)]
    snap = op.snapshot_state(1)
    assert snap.keyed == {"windows": {"a": {10: 2, 20: 1}, "b": {10: 1}}}
    op.close()
    restored = base.RestoredState(1, "job", snap.keyed, [snap.operator], 1)
    settings = config.StateBackendConfig(config.StateBackendType(after), str(tmp_path / "b"))
    op2, out2 = window_op(windows.TumblingEventTimeWindows.of(10), settings, restored)
    op2.process_batch([("b", 5)], [5])
    op2.process_watermark(base.MAX_WATERMARK)
    assert sorted(r[0] for r in out2.records) == [("a", 0, 2), ("a", 10, 1), ("b", 0, 2)]
    assert op2.backend.snapshot() == {}
    op2.close()


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


def test_keyed_process_function_state_and_event_time_timers(
    backend: config.StateBackendConfig,
) -> None:
    op = keyed.ProcessOperator(lambda v: v[0], Timers())
    out = Recorder()
    op.setup(ctx(backend=backend), out)
    op.initialize_state(None)
    op.open()
    op.process_batch([("a", 1), ("b", 2), ("a", 3)], [1, 2, 3])
    op.process_watermark(99)
    assert out.records == []
    op.process_watermark(100)
    assert sorted(r[0] for r in out.records) == [("a", 2, [1, 3], [1]), ("b", 1, [2], [0])]
    op.process_watermark(200)  # a timer fires once
    assert len(out.records) == 2
    op.close()


def values(polled: list[source.SplitRecords] | None) -> list[Any]:
    assert polled is not None
    return [v for part in polled for v in part.values]


def drain(reader: source.SourceReader, max_records: int) -> list[source.SplitRecords]:
    parts: list[source.SplitRecords] = []
    while (polled := reader.poll(max_records)) is not None:
        parts.extend(polled)
    return parts


def test_generator_reader_resumes_exactly_after_its_snapshot() -> None:
    src = generator.GeneratorSource(lambda i: i, count=100)
    splits = src.create_splits(2)
    reader = src.create_reader(0, 1)
    reader.add_splits(splits)
    first = values(reader.poll(10))
    state = reader.snapshot()
    rest_a = values(drain(reader, 7))
    replay = src.create_reader(0, 1)
    replay.add_splits(state)
    rest_parts = drain(replay, 13)
    rest_b = values(rest_parts)
    assert sorted(rest_a) == sorted(rest_b)
    assert sorted(first + rest_a) == list(range(100))
    # Records come attributed to their split; each split is reported finished once.
    assert all(v % 2 == part.split for part in rest_parts for v in part.values)
    assert sorted(part.split for part in rest_parts if part.finished) == [0, 1]


def test_a_restored_generator_reader_reports_an_exhausted_split_finished() -> None:
    src = generator.GeneratorSource(lambda i: i, count=4)
    reader = src.create_reader(0, 1)
    reader.add_splits(src.create_splits(2))
    drain(reader, 100)
    again = src.create_reader(0, 1)
    again.add_splits(reader.snapshot())
    assert again.poll(100) == [
        source.SplitRecords(0, [], finished=True),
        source.SplitRecords(1, [], finished=True),
    ]
    assert again.poll(100) is None


def test_file_sink_stages_until_commit_and_discards_stale_attempts(tmp_path: Path) -> None:
    sink = files.FileSink(str(tmp_path))
    w = sink.create_writer(ctx(attempt=1))
    w.write([{"a": 1}])
    committables = w.prepare_commit(1)
    assert files.read_committed_lines(str(tmp_path)) == []
    w.write([{"a": 2}])
    w.prepare_commit(2)  # pre-committed, but checkpoint 2 never completes
    w.write([{"a": 3}])  # staged after checkpoint 2: never pre-committed
    w.close()
    staging = tmp_path / ".staging" / "op" / "job"
    assert len(list(staging.iterdir())) == 2  # closing dropped the file no checkpoint knows
    w2 = sink.create_writer(ctx(attempt=2))
    w2.commit(committables)
    w2.commit(committables)  # idempotent, as a restore may commit again
    w2.discard_staged(committables, "job")
    assert files.read_committed_lines(str(tmp_path)) == ['{"a":1}']
    assert not list(staging.iterdir())


def test_a_job_restored_from_another_jobs_savepoint_never_deletes_its_staged_files(
    tmp_path: Path,
) -> None:
    sink = files.FileSink(str(tmp_path))
    running = sink.create_writer(ctx())
    running.write([{"a": 1}])
    savepoint = running.prepare_commit(1)
    running.write([{"a": 2}])  # the running job goes on after its savepoint
    fork = sink.create_writer(base.OperatorContext("op", 0, 1, 128, 1, "fork"))
    fork.commit(savepoint)
    fork.discard_staged(savepoint, "job")
    running.commit(savepoint)  # the savepoint's own commit: already done, still fine
    running.commit(running.prepare_commit(2))
    assert files.read_committed_lines(str(tmp_path)) == ['{"a":1}', '{"a":2}']


def test_file_source_resumes_from_its_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    src = files.FileSource(str(path))
    reader = src.create_reader(0, 1)
    reader.add_splits(src.create_splits(1))
    assert values(reader.poll(4)) == [f"line {i}" for i in range(4)]
    state = reader.snapshot()
    reader.close()
    again = src.create_reader(0, 1)
    again.add_splits(state)
    assert again.poll(100) == [source.SplitRecords(0, [f"line {i}" for i in range(4, 10)])]
    assert again.poll(100) == [source.SplitRecords(0, [], finished=True)]
    assert again.poll(100) is None


def test_timer_queue_keeps_one_timer_as_an_int_and_several_as_a_set(
    backend: config.StateBackendConfig,
) -> None:
    from streamjob_runtime.state import views

    state = keyed.create_backend(ctx(backend=backend))
    timers = views.TimerQueue(state, "t")
    timers.register("a", 5)
    timers.register("a", 5)  # at most one per (key, time)
    timers.register("b", 3)
    timers.register("b", 7)
    assert state.snapshot()["t"] == {"a": 5, "b": {3, 7}}
    timers.delete("b", 7)
    assert state.snapshot()["t"] == {"a": 5, "b": 3}
    restored = keyed.create_backend(ctx(backend=backend))
    restored.restore({"t": {"a": 5, "b": {3, 9}}})  # both forms restore
    again = views.TimerQueue(restored, "t")
    assert list(again.pop_due(6)) == [(3, "b"), (5, "a")]
    assert restored.snapshot()["t"] == {"b": 9}
    assert list(again.pop_due(100)) == [(9, "b")]
    assert "t" not in restored.snapshot()
    state.close()
    restored.close()


# -- per-split watermarks -----------------------------------------------------------------

OUT_OF_ORDERNESS = 5


def skewed(i: int) -> tuple[int, int]:
    """Record ``i`` of 3 splits: split 0 runs 1000 ms of event time ahead of the others."""
    split = i % 3
    return (split, (i // 3) * 10 + (1000 if split == 0 else 0))


def source_op(
    restored: base.RestoredState | None = None,
    index: int = 0,
    parallelism: int = 1,
    strategy: windows.WatermarkStrategy | None = None,
) -> tuple[source.SourceOperator, Recorder]:
    strategy = strategy or windows.WatermarkStrategy.for_bounded_out_of_orderness(
        OUT_OF_ORDERNESS
    ).with_timestamp_assigner(lambda r: r[1])
    op = source.SourceOperator(generator.GeneratorSource(skewed, count=300, splits=3), strategy)
    out = Recorder()
    op.setup(ctx(index, parallelism), out)
    op.initialize_state(restored)
    op.open()
    return op, out


def test_a_source_with_several_splits_emits_the_minimum_of_their_watermarks() -> None:
    op, out = source_op()
    assert op.emit_next(30) == 30  # 10 records per split
    # Split 0 is at 1090, the others at 90: the watermark follows the slowest.
    # (One watermark from the batch maximum, 1084, would make splits 1 and 2 late.)
    assert out.watermarks == [90 - OUT_OF_ORDERNESS - 1]


def test_a_finished_split_no_longer_holds_the_watermark_back() -> None:
    op = source.SourceOperator(
        generator.GeneratorSource(lambda i: i, count=7, splits=2),
        windows.WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(
            lambda r: r if r % 2 else r * 100
        ),
    )
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    while op.emit_next(2) is not None:
        pass
    # Split 0 (even records, ts 0..600) ends after 4 records, split 1 (1, 3, 5) after 3:
    # once split 1 is finished, split 0 alone sets the watermark.
    assert out.watermarks[-1] == 599


def test_split_watermarks_are_checkpointed_and_restored_at_another_parallelism() -> None:
    op, _out = source_op()
    op.emit_next(30)
    snapshot = op.snapshot_state(1)
    assert [(s.split.index, s.watermark) for s in snapshot.operator] == [
        (0, 1090 - OUT_OF_ORDERNESS - 1),
        (1, 90 - OUT_OF_ORDERNESS - 1),
        (2, 90 - OUT_OF_ORDERNESS - 1),
    ]
    restored = base.RestoredState(1, "job", {}, [snapshot.operator], 1)
    first, first_out = source_op(restored, 0, 2)  # splits 0 and 2
    _second, second_out = source_op(restored, 1, 2)  # split 1
    # Before any replayed record, each subtask re-emits the event time it restored.
    assert first_out.watermarks == [84]
    assert first_out.records == []
    assert second_out.watermarks == [84]
    first.emit_next(20)
    assert first_out.watermarks[-1] == 190 - OUT_OF_ORDERNESS - 1  # split 2, not split 0
    assert [r[0] for r, _ in first_out.records] == [0] * 10 + [2] * 10


def test_a_bare_split_from_an_older_checkpoint_restores_at_the_lowest_watermark() -> None:
    bare = [generator.GeneratorSplit(j, 3, 30 + j) for j in range(3)]
    op, out = source_op(base.RestoredState(1, "job", {}, [bare], 1))
    assert out.watermarks == []
    op.emit_next(3)
    assert out.watermarks == [100 - OUT_OF_ORDERNESS - 1]


def test_an_idle_split_stops_holding_the_watermark_back() -> None:
    now = [1000.0]
    strategy = (
        windows.WatermarkStrategy.for_monotonous_timestamps()
        .with_timestamp_assigner(lambda r: r[1])
        .with_idleness(500)
    )
    op = source.SourceOperator(generator.GeneratorSource(skewed, count=300, splits=3), strategy)
    op.clock = lambda: now[0]
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    assert isinstance(op.reader, generator.GeneratorReader)
    op.reader.splits = [s for s in op.reader.splits if s.index == 0]  # 1 and 2 read nothing
    op.emit_next(10)
    assert out.watermarks == []  # splits 1 and 2 are not idle yet
    now[0] += 0.6
    op.emit_next(10)
    assert out.watermarks == [1000 + 19 * 10 - 1]


def test_window_operator_restores_its_watermark_and_drops_the_same_late_records() -> None:
    op, _ = window_op(windows.TumblingEventTimeWindows.of(10))
    op.process_batch([("a", 1)], [1])
    op.process_watermark(15)
    op.process_batch([("a", 16)], [16])
    snap = op.snapshot_state(1)
    op.process_watermark(base.MAX_WATERMARK)  # a drain: not what a restore resumes at
    assert op.snapshot_state(2).operator == [15]
    restored, out = window_op(windows.TumblingEventTimeWindows.of(10))
    restored.initialize_state(base.RestoredState(1, "job", snap.keyed, [snap.operator, [20]], 2))
    restored.process_batch([("a", 2), ("a", 17)], [2, 17])  # [0, 10) fired before the failure
    assert restored.late_records == 1
    restored.process_watermark(19)
    assert [r for r, _ in out.records] == [("a", 10, 2)]


def test_keyed_process_function_sees_the_restored_watermark(
    backend: config.StateBackendConfig,
) -> None:
    op = keyed.ProcessOperator(lambda v: v[0], Timers())
    op.setup(ctx(backend=backend), Recorder())
    op.initialize_state(None)
    op.open()
    op.process_watermark(42)
    snap = op.snapshot_state(1)
    again = keyed.ProcessOperator(lambda v: v[0], Timers())
    again.setup(ctx(backend=backend), Recorder())
    again.initialize_state(base.RestoredState(1, "job", snap.keyed, [snap.operator], 1))
    again.open()
    assert again.timers.current_watermark() == 42
    op.close()
    again.close()


def test_a_file_source_holds_its_watermark_until_every_file_is_read(tmp_path: Path) -> None:
    later, earlier = tmp_path / "later.txt", tmp_path / "earlier.txt"
    later.write_text("".join(f"{100 + i}\n" for i in range(10)))
    earlier.write_text("".join(f"{i}\n" for i in range(10)))
    strategy = windows.WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(int)
    op = source.SourceOperator(files.FileSource([str(later), str(earlier)]), strategy)
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    assert op.emit_next(100) == 10  # all of the first file
    assert out.watermarks == []  # the second file, unread, might be behind: it is
    while op.emit_next(100) is not None:
        pass
    assert out.watermarks == [8]
    assert all(int(v) > 8 for v, _ in out.records[:10])


def test_an_unchanged_timer_table_is_pickled_once_and_restores_exactly() -> None:
    import pickle

    from streamjob_runtime.state import serialization

    def restore(snap: base.OperatorSnapshot) -> tuple[dict[str, dict[Any, Any]], list[Any]]:
        keyed_part, operator_part = pickle.loads(serialization.dumps((snap.keyed, snap.operator)))
        assert all(type(t) is dict for t in keyed_part.values())
        return keyed_part, operator_part

    op = keyed.ProcessOperator(lambda v: v[0], Timers())
    out = Recorder()
    op.setup(ctx(), out)
    op.initialize_state(None)
    op.open()
    op.process_batch([("a", 1), ("b", 2)], [1, 2])
    first = op.snapshot_state(1)
    op.process_batch([("a", 3)], [3])  # state changes, the timer (a, 100) already exists
    second = op.snapshot_state(2)
    assert second.keyed["__event_timers__"] is first.keyed["__event_timers__"]
    keyed_part, _ = restore(second)
    assert keyed_part["__event_timers__"] == {"a": 100, "b": 100}
    assert keyed_part["seen"] == {"a": 2, "b": 1}

    op.backend.current_key = "c"  # a new timer: the table is pickled again
    op.timers.register_event_time_timer(150)
    third = op.snapshot_state(3)
    assert third.keyed["__event_timers__"] is not second.keyed["__event_timers__"]
    keyed_part, operator_part = restore(third)
    assert keyed_part["__event_timers__"] == {"a": 100, "b": 100, "c": 150}

    again = keyed.ProcessOperator(lambda v: v[0], Timers())
    fired = Recorder()
    again.setup(ctx(), fired)
    again.initialize_state(base.RestoredState(3, "job", keyed_part, [operator_part], 1))
    again.open()
    again.process_watermark(200)
    assert sorted(r[0][0] for r in fired.records) == ["a", "b", "c"]
    op.close()
    again.close()
