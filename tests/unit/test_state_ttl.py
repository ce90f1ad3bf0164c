"""State TTL (processing time) and per-entry map state, alike on both state backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from streamjob_runtime import config, functions
from streamjob_runtime.operators import base, keyed
from streamjob_runtime.state import rocksdb, ttl, views
from tests.unit.test_state_backends import Recorder

MAXP = 128


class Clock:
    """An injectable processing-time clock (ms)."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def ctx(kind: str, tmp_path: Path) -> base.OperatorContext:
    settings = config.StateBackendConfig(config.StateBackendType(kind), str(tmp_path))
    return base.OperatorContext("op", 0, 1, MAXP, 1, "job", settings)


@pytest.fixture(params=["hashmap", "rocksdb"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(kind: str, tmp_path: Path) -> Iterator[views.KeyedStateBackend]:
    state = keyed.create_backend(ctx(kind, tmp_path))
    yield state
    state.close()


def config_of(
    update: ttl.UpdateType = ttl.UpdateType.ON_CREATE_AND_WRITE,
    visibility: ttl.StateVisibility = ttl.StateVisibility.NEVER_RETURN_EXPIRED,
    **kw: Any,
) -> ttl.StateTtlConfig:
    return ttl.StateTtlConfig(100, update, visibility, **kw)


def test_a_value_expires_ttl_after_its_last_write_and_reads_do_not_renew_it(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    state: views.ValueState[int] = views.TtlValueState(backend, "v", None, config_of(), clock)
    backend.current_key = "a"
    state.update(1)
    clock.now += 99
    assert state.value() == 1  # a read, not a write: the timestamp stays
    clock.now += 1
    assert state.value() is None
    state.update(2)  # a write renews it
    clock.now += 99
    assert state.value() == 2


def test_on_read_and_write_renews_the_ttl_on_every_read(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    ttl_config = config_of(ttl.UpdateType.ON_READ_AND_WRITE)
    state: views.ValueState[int] = views.TtlValueState(backend, "v", 0, ttl_config, clock)
    backend.current_key = "a"
    state.update(7)
    for _ in range(5):
        clock.now += 99
        assert state.value() == 7
    clock.now += 100
    assert state.value() == 0  # the default once expired


def test_return_expired_if_not_cleaned_up_shows_an_expired_value_once(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    # No incremental cleanup: it could clean the entry up before the read (as in Flink).
    ttl_config = config_of(
        visibility=ttl.StateVisibility.RETURN_EXPIRED_IF_NOT_CLEANED_UP, cleanup_incremental_size=0
    )
    state: views.ValueState[str] = views.TtlValueState(backend, "v", None, ttl_config, clock)
    backend.current_key = "a"
    state.update("old")
    clock.now += 500
    assert state.value() == "old"  # expired, not cleaned up yet: returned, then cleared
    assert state.value() is None


def test_list_elements_and_map_entries_expire_one_by_one(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    items: views.ListState[int] = views.TtlListState(backend, "l", config_of(), clock)
    kinds: views.MapState[str, int] = views.MapState(backend, "m", config_of(), clock)
    backend.current_key = 5
    items.add(1)
    kinds.put("x", 1)
    clock.now += 60
    items.add(2)
    kinds.put("y", 2)
    assert items.get() == [1, 2]
    assert sorted(kinds.items()) == [("x", 1), ("y", 2)]
    clock.now += 50  # x and 1 written 110 ms ago, y and 2 50 ms ago
    assert items.get() == [2]
    assert kinds.get("x") is None
    assert not kinds.contains("x")
    assert kinds.contains("y")
    assert kinds.keys() == ["y"]
    clock.now += 100
    assert items.get() == []
    assert kinds.is_empty()
    assert backend.snapshot() == {}


def test_a_full_snapshot_leaves_expired_entries_out_unless_told_not_to(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    cleaned: views.ValueState[int] = views.TtlValueState(backend, "c", None, config_of(), clock)
    kept_config = config_of(cleanup_full_snapshot=False)
    kept: views.ValueState[int] = views.TtlValueState(backend, "k", None, kept_config, clock)
    kinds: views.MapState[str, int] = views.MapState(backend, "m", config_of(), clock)
    backend.current_key = "old"
    cleaned.update(1)
    kept.update(1)
    kinds.put("old", 1)
    clock.now += 80
    backend.current_key = "new"
    cleaned.update(2)
    kept.update(2)
    kinds.put("new", 2)
    backend.current_key = "old"
    kinds.put("new", 3)
    clock.now += 30
    snap = backend.snapshot()
    assert snap["c"] == {"new": ttl.TtlValue(2, 1080)}
    assert snap["k"] == {"old": ttl.TtlValue(1, 1000), "new": ttl.TtlValue(2, 1080)}
    assert snap["m"] == {"new": {"new": ttl.TtlValue(2, 1080)}, "old": {"new": (3, 1080)}}
    assert all(isinstance(v, views.MapValue) for v in snap["m"].values())


def test_incremental_cleanup_deletes_expired_entries_nobody_reads_again(
    backend: views.KeyedStateBackend,
) -> None:
    clock = Clock()
    state: views.ValueState[int] = views.TtlValueState(backend, "v", None, config_of(), clock)
    never: views.ValueState[int] = views.TtlValueState(
        backend, "n", None, config_of(cleanup_incremental_size=0), clock
    )
    for k in range(1000):
        backend.current_key = k
        state.update(k)
        never.update(k)
    clock.now += 1_000  # all expired
    backend.current_key = "reader"
    for _ in range(300):  # 300 accesses x 5 entries: more than a full pass
        state.value()
        never.value()
    table, untouched = backend.table("v"), backend.table("n")
    assert [k for k, _ in table.items()] == []
    assert len(list(untouched.items())) == 1000  # no incremental cleanup configured


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_ttl_timestamps_survive_a_snapshot_into_either_backend(
    kind: str, after: str, tmp_path: Path
) -> None:
    clock = Clock()
    before = keyed.create_backend(ctx(kind, tmp_path / "a"))
    state: views.ValueState[int] = views.TtlValueState(before, "v", None, config_of(), clock)
    kinds: views.MapState[str, int] = views.MapState(before, "m", config_of(), clock)
    before.current_key = "a"
    state.update(1)
    kinds.put("x", 1)
    snap = before.snapshot()
    before.close()
    restored = keyed.create_backend(ctx(after, tmp_path / "b"))
    restored.restore(snap)
    state = views.TtlValueState(restored, "v", None, config_of(), clock)
    kinds = views.MapState(restored, "m", config_of(), clock)
    restored.current_key = "a"
    clock.now += 99
    assert state.value() == 1
    assert kinds.get("x") == 1
    clock.now += 1  # expires when it would have without the restore
    assert state.value() is None
    assert kinds.get("x") is None
    restored.close()


def test_an_invalid_ttl_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="TTL must be > 0 ms"):
        ttl.StateTtlConfig(0)


def test_rocksdb_map_state_stores_each_entry_under_its_own_key(tmp_path: Path) -> None:
    """A put writes one small entry, not the whole map; prefixes of keys do not mix."""
    state = keyed.create_backend(ctx("rocksdb", tmp_path))
    assert isinstance(state, rocksdb.RocksDBKeyedStateBackend)
    kinds: views.MapState[int, str] = views.MapState(state, "m")
    for key in ["ab", "abc", "a"]:
        state.current_key = key
        for i in range(100):
            kinds.put(i, f"{key}-{i}")
    family = state.map_table("m")._family
    raw = [(cast(bytes, k), cast(bytes, v)) for k, v in family.items()]
    assert len(raw) == 300  # one RocksDB entry per map entry
    assert max(len(v) for _, v in raw) < 16
    state.current_key = "ab"
    assert len(kinds.keys()) == 100
    assert kinds.get(7) == "ab-7"
    kinds.clear()
    assert kinds.is_empty()
    state.current_key = "abc"
    assert len(kinds.keys()) == 100
    snap = state.snapshot()
    assert snap["m"]["a"] == {i: f"a-{i}" for i in range(100)}
    assert "ab" not in snap["m"]
    state.close()


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_an_incremental_checkpoint_of_map_state_restores_into_either_backend(
    after: str, tmp_path: Path
) -> None:
    state = keyed.create_backend(ctx("rocksdb", tmp_path / "a"))
    assert isinstance(state, rocksdb.RocksDBKeyedStateBackend)
    kinds: views.MapState[int, int] = views.MapState(state, "m")
    counts: views.ValueState[int] = views.ValueState(state, "v")
    for key in range(50):
        state.current_key = key
        counts.update(key)
        for i in range(key % 5):
            kinds.put(i, key * i)
    job_dir = tmp_path / "job"
    incremental = state.upload(state.take_checkpoint(1), job_dir)
    assert incremental.maps == ["m"]
    expected = state.snapshot()
    state.close()
    restored = keyed.create_backend(ctx(after, tmp_path / "b"))
    if isinstance(restored, rocksdb.RocksDBKeyedStateBackend):
        restored.restore_incremental(incremental, job_dir, 0, MAXP - 1)
    else:
        restored.restore(rocksdb.read_incremental(incremental, job_dir, 0, MAXP - 1))
    assert restored.snapshot() == expected
    kinds = views.MapState(restored, "m")
    restored.current_key = 4
    assert dict(kinds.items()) == {0: 0, 1: 4, 2: 8, 3: 12}
    restored.close()


class Dedup(functions.KeyedProcessFunction):
    """Emits a key's value unless the key was seen within the last 100 ms (a TTL'd flag)."""

    def open(self, ctx: functions.KeyedContext) -> None:
        self.seen = ctx.value_state("seen", ttl=ttl.StateTtlConfig(100))

    def process_element(self, value: Any, ctx: functions.KeyedContext) -> list[Any]:
        if self.seen.value():
            return []
        self.seen.update(True)
        return [value]


def dedup_op(
    kind: str, tmp_path: Path, clock: Clock, restored: base.RestoredState | None = None
) -> tuple[keyed.ProcessOperator, Recorder]:
    op = keyed.ProcessOperator(lambda v: v[0], Dedup())
    out = Recorder()
    op.setup(ctx(kind, tmp_path), out)
    op.initialize_state(restored)
    op.open()
    op.context.clock = clock
    return op, out


@pytest.mark.parametrize("after", ["hashmap", "rocksdb"])
def test_a_process_function_state_with_ttl_expires_through_a_savepoint(
    kind: str, after: str, tmp_path: Path
) -> None:
    clock = Clock()
    op, out = dedup_op(kind, tmp_path / "a", clock)
    op.process_batch([("a", 1), ("a", 2), ("b", 3)], None)
    clock.now += 50
    op.process_batch([("a", 4), ("c", 5)], None)
    assert out.records == [("a", 1), ("b", 3), ("c", 5)]
    clock.now += 60  # a and b expired (110 ms), c not (60 ms)
    snap = op.snapshot_state(1)
    assert set(snap.keyed["seen"]) == {"c"}  # the full snapshot left the expired out
    op.close()
    again, out = dedup_op(
        after, tmp_path / "b", clock, base.RestoredState(1, "job", snap.keyed, [snap.operator], 1)
    )
    again.process_batch([("a", 6), ("c", 7)], None)
    clock.now += 40  # c expires at 150
    again.process_batch([("c", 8)], None)
    assert out.records == [("a", 6), ("c", 8)]
    again.close()
