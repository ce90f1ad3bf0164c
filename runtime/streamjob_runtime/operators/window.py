"""Event-time windows with incremental aggregation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamjob_runtime import functions, windows
from streamjob_runtime.operators import base, keyed
from streamjob_runtime.state import rocksdb, views

WindowFunction = Callable[[Any, functions.TimeWindow, Any], Any]


class ReduceAggregate(functions.AggregateFunction[Any, Any, Any]):
    """A reduce function seen as an aggregate (the accumulator is the value)."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def create_accumulator(self) -> Any:
        return keyed._MISSING

    def add(self, value: Any, accumulator: Any) -> Any:
        return value if accumulator is keyed._MISSING else self.fn(accumulator, value)

    def get_result(self, accumulator: Any) -> Any:
        return accumulator


class WindowOperator(keyed.KeyedOperator):
    """Assigns records to windows by event time and fires them on the watermark.

    A window ``[start, end)`` fires once the watermark reaches ``end - 1``; its
    result carries the timestamp ``end - 1``.  Records for windows that already
    fired are late and dropped (counted in :attr:`late_records`).  The
    watermark is checkpointed, so a restored operator drops the same records as
    the attempt it replaces; the end-of-input watermark (end of a bounded input
    or ``stop --drain``) is not: a job restored after a drain accepts records
    again.

    On the ``hashmap`` backend the accumulators live in :attr:`windows`; on
    ``rocksdb`` in the backend's map state ``windows`` (record key -> window end
    -> accumulator, one RocksDB entry each), with incremental checkpoints, and
    only an index of which keys have which open windows stays in memory
    (rebuilt from the keys at restore, as the timer queue is).  Both snapshot to
    the same canonical form: ``{"windows": {key: MapValue{end: accumulator}}}``.
    """

    def __init__(
        self,
        key_selector: functions.KeySelector,
        assigner: windows.WindowAssigner,
        agg: functions.AggregateFunction[Any, Any, Any],
        window_fn: WindowFunction | None,
    ) -> None:
        super().__init__(key_selector)
        self.assigner = assigner
        self.agg = agg
        self.window_fn = window_fn
        self.watermark = base.MIN_WATERMARK
        self.saved_watermark = base.MIN_WATERMARK  # the watermark below the end of input
        self.late_records = 0
        # window end -> {key -> accumulator}: firing touches only due windows.
        self.windows: dict[int, dict[Any, Any]] = {}
        self.rocks: rocksdb.RocksMapTable | None = None
        # rocksdb: window end -> the keys with that window open (an ordered set).
        self.index: dict[int, dict[Any, None]] = {}

    def _rocks_table(self) -> rocksdb.RocksMapTable | None:
        # After the restore: a DB restored from a checkpoint's files has no state before it.
        if self.rocks is None and isinstance(self.backend, rocksdb.RocksDBKeyedStateBackend):
            self.rocks = self.backend.map_table("windows")
        return self.rocks

    def open(self) -> None:
        self._rocks_table()

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        if restored is None:
            return
        self.watermark = self.saved_watermark = base.restored_watermark(restored)
        if isinstance(self.backend, rocksdb.RocksDBKeyedStateBackend):
            super().initialize_state(restored)
            table = self._rocks_table()
            assert table is not None
            for key, end in table.all_keys():
                self.index.setdefault(end, {})[key] = None
            return
        for key, per_window in restored.keyed.get("windows", {}).items():
            for end, acc in per_window.items():
                self.windows.setdefault(end, {})[key] = acc

    def operator_state(self) -> list[Any]:
        return base.saved_watermark(self.saved_watermark)

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        if self.rocks is not None:
            return super().snapshot_state(checkpoint_id)
        by_key: dict[Any, dict[int, Any]] = {}
        for end, accs in self.windows.items():
            for key, acc in accs.items():
                by_key.setdefault(key, views.MapValue())[end] = acc
        return base.OperatorSnapshot(
            keyed={"windows": by_key} if by_key else {},
            operator=self.operator_state(),
        )

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        if timestamps is None:
            raise base.UnrecoverableError(
                f"window operator {self.ctx.uid!r} received records without event timestamps;"
                " give the source a WatermarkStrategy with a timestamp assigner"
            )
        if self.rocks is not None:
            self._process_batch_rocks(self.rocks, values, timestamps)
            return
        key_of, add, create = self.key_selector, self.agg.add, self.agg.create_accumulator
        window_ends, wins, watermark = self.assigner.window_ends, self.windows, self.watermark
        for v, ts in zip(values, timestamps, strict=True):
            k = key_of(v)
            for end in window_ends(ts):
                if end - 1 <= watermark:
                    self.late_records += 1
                    continue
                accs = wins.get(end)
                if accs is None:
                    accs = wins[end] = {}
                acc = accs.get(k, keyed._MISSING)
                accs[k] = add(v, create() if acc is keyed._MISSING else acc)

    def _process_batch_rocks(
        self, table: rocksdb.RocksMapTable, values: base.Batch, timestamps: list[int]
    ) -> None:
        key_of, add, create = self.key_selector, self.agg.add, self.agg.create_accumulator
        window_ends, index, watermark = self.assigner.window_ends, self.index, self.watermark
        lookup, put = table.lookup, table.put
        for v, ts in zip(values, timestamps, strict=True):
            k = key_of(v)
            for end in window_ends(ts):
                if end - 1 <= watermark:
                    self.late_records += 1
                    continue
                acc = lookup(k, end, keyed._MISSING)
                if acc is keyed._MISSING:
                    keys = index.get(end)
                    if keys is None:
                        keys = index[end] = {}
                    keys[k] = None
                    acc = create()
                put(k, end, add(v, acc))

    def _fire_rocks(self, table: rocksdb.RocksMapTable, watermark: int) -> None:
        due = sorted(end for end in self.index if end - 1 <= watermark)
        result = self.agg.get_result
        for end in due:
            out = []
            window = self.assigner.window_for_end(end)
            for key in self.index.pop(end):
                acc = table.lookup(key, end, keyed._MISSING)
                if acc is keyed._MISSING:
                    continue
                table.remove(key, end)
                value = result(acc)
                out.append(value if self.window_fn is None else self.window_fn(key, window, value))
            if out:
                self.output.emit(out, [end - 1] * len(out))

    def process_watermark(self, watermark: int) -> None:
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        if watermark < base.MAX_WATERMARK:
            self.saved_watermark = watermark
        if self.rocks is not None:
            self._fire_rocks(self.rocks, watermark)
            self.output.emit_watermark(watermark)
            return
        due = sorted(end for end in self.windows if end - 1 <= watermark)
        for end in due:
            accs = self.windows.pop(end)
            result = self.agg.get_result
            if self.window_fn is None:
                out = [result(acc) for acc in accs.values()]
            else:
                window, fn = self.assigner.window_for_end(end), self.window_fn
                out = [fn(key, window, result(acc)) for key, acc in accs.items()]
            if out:
                self.output.emit(out, [end - 1] * len(out))
        self.output.emit_watermark(watermark)
