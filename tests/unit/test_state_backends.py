"""The keyed state API on both state backends (``hashmap``, ``rocksdb``), and their snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamjob_runtime import config, functions
from streamjob_runtime.graph import keygroups
from streamjob_runtime.operators import base, keyed
from streamjob_runtime.state import rocksdb, views

MAXP = 128


def ctx(
    backend: config.StateBackendConfig, index: int = 0, parallelism: int = 1
) -> base.OperatorContext:
    return base.OperatorContext("op", index, parallelism, MAXP, 1, "job", backend)


def settings(kind: str, tmp_path: Path) -> config.StateBackendConfig:
    return config.StateBackendConfig(config.StateBackendType(kind), str(tmp_path))


@pytest.fixture(params=["hashmap", "rocksdb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[views.KeyedStateBackend]:
    state = keyed.create_backend(ctx(settings(request.param, tmp_path)))
    yield state
    state.close()


def test_value_list_and_map_state_behave_alike(backend: views.KeyedStateBackend) -> None:
    count: views.ValueState[int] = views.ValueState(backend, "count", 0)
    items: views.ListState[Any] = views.ListState(backend, "items")
    kinds: views.MapState[Any, Any] = views.MapState(backend, "kinds")
    for key in ["a", 7, ("t", 1)]:
        backend.current_key = key
        assert count.value() == 0
        assert items.get() == []
        assert kinds.is_empty()
        count.update((count.value() or 0) + 1)
        items.add(1)
        items.add((2, "x"))
        kinds.put("k", [1])
        kinds.put(2, 2.5)
    backend.current_key = 7
    assert count.value() == 1
    assert items.get() == [1, (2, "x")]
    assert sorted(map(str, kinds.keys())) == ["2", "k"]
    assert kinds.get("k") == [1]
    assert kinds.contains(2)
    assert not kinds.contains(3)
    kinds.remove("k")
    kinds.remove("missing")
    assert dict(kinds.items()) == {2: 2.5}
    kinds.remove(2)
    assert kinds.is_empty()
    items.update([9])
    count.clear()
    assert count.value() == 0
    assert items.get() == [9]
    snapshot = backend.snapshot()
    assert snapshot == {
        "count": {"a": 1, ("t", 1): 1},
        "items": {"a": [1, (2, "x")], 7: [9], ("t", 1): [1, (2, "x")]},
        "kinds": {"a": {"k": [1], 2: 2.5}, ("t", 1): {"k": [1], 2: 2.5}},
    }


def test_a_value_read_is_a_copy_until_written_back(backend: views.KeyedStateBackend) -> None:
    """On every backend a change of state is a write: views never rely on in-place mutation."""
    items: views.ListState[int] = views.ListState(backend, "items")
    backend.current_key = "k"
    items.add(1)
    items.get().append(2)  # a copy: not a change of state
    assert items.get() == [1]


class Sessions(functions.KeyedProcessFunction):
    """Counts per key and emits the count on an event-time timer 10 ms after the last event."""

    def open(self, ctx: functions.KeyedContext) -> None:
        self.count = ctx.value_state("count", 0)
        self.last = ctx.value_state("last")

    def process_element(self, value: Any, ctx: functions.KeyedContext) -> list[Any]:
        self.count.update((self.count.value() or 0) + 1)
        previous = self.last.value()
        if previous is not None:
            ctx.timer_service.delete_event_time_timer(previous + 10)
        assert ctx.timestamp is not None
        self.last.update(ctx.timestamp)
        ctx.timer_service.register_event_time_timer(ctx.timestamp + 10)
        return []

    def on_timer(self, timestamp: int, ctx: functions.KeyedContext) -> list[Any]:
        out = [(ctx.current_key, self.count.value())]
        self.count.clear()
        self.last.clear()
        return out


class Recorder:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        self.records.extend(values)

    def emit_watermark(self, watermark: int) -> None:
        pass


def process_op(
    backend: config.StateBackendConfig,
    restored: base.RestoredState | None = None,
    index: int = 0,
    parallelism: int = 1,
) -> tuple[keyed.ProcessOperator, Recorder]:
    op = keyed.ProcessOperator(lambda v: v[0], Sessions())
    out = Recorder()
    op.setup(ctx(backend, index, parallelism), out)
    op.initialize_state(restored)
    op.open()
    return op, out


@pytest.mark.parametrize(
    ("before", "after"),
    [("hashmap", "rocksdb"), ("rocksdb", "hashmap"), ("rocksdb", "rocksdb")],
)
def test_a_snapshot_restores_into_either_backend_with_its_timers(
    before: str, after: str, tmp_path: Path
) -> None:
    """The snapshot form is canonical: switching backends through a snapshot loses nothing."""
    op, _ = process_op(settings(before, tmp_path))
    op.process_batch([("a", 1), ("b", 2), ("a", 3), ("c", 50)], [1, 2, 3, 50])
    op.process_watermark(20)  # fires b (timer 12) and a (timer 13)
    snap = op.snapshot_state(1)
    op.close()
    restored = base.RestoredState(1, "job", snap.keyed, [snap.operator], 1)
    again, out = process_op(settings(after, tmp_path), restored)
    again.process_batch([("c", 55), ("d", 56)], [55, 56])
    again.process_watermark(100)
    assert sorted(out.records) == [("c", 2), ("d", 1)]
    assert again.backend.snapshot() == {}
    again.close()


def test_rocksdb_keys_start_with_the_key_group_so_a_range_is_one_scan(tmp_path: Path) -> None:
    state = keyed.create_backend(ctx(settings("rocksdb", tmp_path)))
    assert isinstance(state, rocksdb.RocksDBKeyedStateBackend)
    table = state.table("t")
    for k in range(500):
        table[k] = k * k
    groups = {k: keygroups.key_group(k, MAXP) for k in range(500)}
    encoded = state.encode_key(42)
    assert encoded[:2] == groups[42].to_bytes(2, "big")
    in_range = dict(table.items_in_groups(10, 20))
    assert in_range == {k: k * k for k, g in groups.items() if 10 <= g <= 20}
    assert [groups[k] for k, _ in table.items()] == sorted(groups[k] for k, _ in table.items())
    state.close()


def test_a_closed_rocksdb_backend_deletes_its_directory(tmp_path: Path) -> None:
    state = keyed.create_backend(ctx(settings("rocksdb", tmp_path)))
    assert isinstance(state, rocksdb.RocksDBKeyedStateBackend)
    state.table("t")["k"] = 1
    local = state.take_checkpoint(1)  # taken, never uploaded
    assert local.directory.is_dir()
    assert state.path.is_dir()
    assert state.path.is_relative_to(tmp_path)
    state.close()
    assert not state.path.exists()
    assert not local.directory.exists()


@pytest.mark.parametrize(
    "value",
    [0, -1, 2**63 - 1, -(2**63), 2**80, 1.5, float("inf"), "", "é\ud800", True, None, (1, "a")],
)
def test_rocksdb_serialization_round_trips_values_of_every_type(value: Any) -> None:
    data = rocksdb.serialize(value)
    back = rocksdb.deserialize(data)
    assert back == value
    assert type(back) is type(value)


def test_reduce_restored_at_another_parallelism_keeps_every_count(tmp_path: Path) -> None:
    """Rescale 1 -> 2 through the canonical snapshot: each subtask gets its key groups."""
    rocks = settings("rocksdb", tmp_path)
    op = keyed.ReduceOperator(lambda v: v[0], lambda x, y: (x[0], x[1] + y[1]))
    op.setup(ctx(rocks), Recorder())
    op.initialize_state(None)
    op.open()
    op.process_batch([(k % 10, 1) for k in range(100)], None)
    snap = op.snapshot_state(1)
    op.close()
    totals: dict[Any, Any] = {}
    for index in range(2):
        mine = keygroups.KeyGroupRange.for_subtask(index, MAXP, 2)
        part = {
            name: {k: v for k, v in table.items() if mine.contains(keygroups.key_group(k, MAXP))}
            for name, table in snap.keyed.items()
        }
        sub = keyed.ReduceOperator(lambda v: v[0], lambda x, y: (x[0], x[1] + y[1]))
        out = Recorder()
        sub.setup(ctx(rocks, index, 2), out)
        sub.initialize_state(base.RestoredState(1, "job", part, [[]], 1))
        sub.open()
        sub.process_batch([(k, 1) for k in range(10) if part["reduce"].get(k)], None)
        totals.update(dict(out.records))
        sub.close()
    assert totals == {k: 11 for k in range(10)}


def test_window_state_survives_a_checkpoint_on_the_rocksdb_backend(tmp_path: Path) -> None:
    """Windows keep their accumulators in RocksDB: an incremental checkpoint restores them."""
    from streamjob_runtime import windows
    from streamjob_runtime.operators import window

    class Count(functions.AggregateFunction[Any, int, int]):
        def create_accumulator(self) -> int:
            return 0

        def add(self, value: Any, accumulator: int) -> int:
            return accumulator + 1

        def get_result(self, accumulator: int) -> int:
            return accumulator

    def window_op() -> tuple[window.WindowOperator, Recorder]:
        op = window.WindowOperator(
            lambda v: v[0], windows.TumblingEventTimeWindows.of(10), Count(), None
        )
        out = Recorder()
        op.setup(ctx(settings("rocksdb", tmp_path)), out)
        return op, out

    op, _ = window_op()
    op.initialize_state(None)
    op.open()
    op.process_batch([("a", 1), ("b", 2)], [1, 2])
    snap = op.snapshot_state_incremental(1)
    assert snap is not None
    assert snap.incremental is not None
    job_dir = tmp_path / "job"
    state = snap.incremental(job_dir)
    op.close()
    again, out = window_op()
    again.initialize_state(base.RestoredState(1, "job", {}, [snap.operator], 1, [(state, job_dir)]))
    again.open()
    again.process_watermark(base.MAX_WATERMARK)
    assert sorted(out.records) == [1, 1]
    again.close()
