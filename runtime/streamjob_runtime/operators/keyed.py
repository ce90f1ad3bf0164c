"""Keyed operators: reduce, aggregate, process, over the job's state backend."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from streamjob_runtime import config, functions
from streamjob_runtime.graph import keygroups
from streamjob_runtime.operators import base
from streamjob_runtime.state import heap, rocksdb, serialization, views

_MISSING = object()


class KeyedOperator(base.StreamOperator):
    """Base for operators whose input is partitioned by ``key_selector``.

    ``uses_state_backend``: the operator keeps its keyed state in ``self.backend``
    (the job's state backend).  One that keeps it elsewhere sets it false and gets
    the ``hashmap`` backend and full snapshots of its own :meth:`snapshot_state`.
    """

    uses_state_backend = True

    def __init__(self, key_selector: functions.KeySelector) -> None:
        self.key_selector = key_selector
        self.backend: views.KeyedStateBackend = heap.KeyedStateBackend()
        self._shared_tables: heap.SharedTables | None = None

    def setup(self, ctx: base.OperatorContext, output: base.Output) -> None:
        super().setup(ctx, output)
        if self.uses_state_backend:
            self.backend = create_backend(ctx)

    def close(self) -> None:
        self.backend.close()

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        if restored is None:
            return
        self.backend.restore(restored.keyed)
        groups = self.ctx.key_group_range
        for state, job_dir in restored.keyed_incremental:
            if isinstance(self.backend, rocksdb.RocksDBKeyedStateBackend):
                # Its files (a local copy, with local recovery), or raw entries batch by
                # batch: never the whole state in memory.
                local = local_state_dir(self.ctx, restored.job_id)
                self.backend.restore_incremental(
                    state,
                    job_dir,
                    groups.start,
                    groups.end,
                    None if local is None else local / f"chk-{restored.checkpoint_id}",
                )
            else:
                self.backend.restore(
                    rocksdb.read_incremental(state, job_dir, groups.start, groups.end)
                )

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        return base.OperatorSnapshot(keyed=self.backend.snapshot(), operator=self.operator_state())

    def snapshot_state_incremental(self, checkpoint_id: int) -> base.OperatorSnapshot | None:
        backend = self.backend
        if not self.ctx.state_backend.incremental_checkpoints:
            return None
        if isinstance(backend, heap.KeyedStateBackend):
            return self._snapshot_heap_incremental(checkpoint_id)
        if not isinstance(backend, rocksdb.RocksDBKeyedStateBackend):
            return None
        local = backend.take_checkpoint(checkpoint_id)
        return base.OperatorSnapshot(
            operator=self.operator_state(),
            incremental=functools.partial(backend.upload, local),
        )

    def _snapshot_heap_incremental(self, checkpoint_id: int) -> base.OperatorSnapshot | None:
        """The ``hashmap`` backend's incremental snapshot (see :mod:`state.heap`), or None
        (a full one) while no table is unchanged since the previous checkpoint."""
        snap = self.snapshot_state(checkpoint_id)
        if not any(isinstance(t, serialization.PickledTable) for t in snap.keyed.values()):
            return None
        if self._shared_tables is None:
            self._shared_tables = heap.SharedTables(f"{self.ctx.uid}-{self.ctx.subtask_index}")
        inline, refs, new = self._shared_tables.plan(checkpoint_id, snap.keyed)
        if not refs:
            return None
        try:
            # Now, before the next record changes the live tables.
            data = serialization.dumps(inline)
        except Exception:
            self._shared_tables.forget(checkpoint_id)
            return None  # the full snapshot reports which value cannot be pickled
        return base.OperatorSnapshot(
            operator=snap.operator, incremental=functools.partial(heap.upload, data, refs, new)
        )

    def operator_state(self) -> list[Any]:
        """Operator state saved beside the keyed state (none unless a subclass has some)."""
        return []

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        backend = self.backend
        if isinstance(backend, rocksdb.RocksDBKeyedStateBackend):
            backend.notify_checkpoint_complete(checkpoint_id)
        elif self._shared_tables is not None:
            self._shared_tables.confirm(checkpoint_id)


def local_state_dir(ctx: base.OperatorContext, job_id: str) -> Path | None:
    """Where this TaskManager keeps subtask ``ctx``'s local state copies of job ``job_id``
    (``None`` without local recovery); per process, as the copies die with it."""
    settings = ctx.state_backend
    if not settings.local_recovery:
        return None
    root = Path(settings.local_dir or tempfile.gettempdir()) / "streamjob-localstate"
    return root / f"tm-{os.getpid()}" / job_id / f"{ctx.uid}-{ctx.subtask_index}"


def discard_local_state(settings: config.StateBackendConfig, job_id: str) -> None:
    """Delete this TaskManager's local state copies of job ``job_id`` (it has ended)."""
    root = Path(settings.local_dir or tempfile.gettempdir()) / "streamjob-localstate"
    shutil.rmtree(root / f"tm-{os.getpid()}" / job_id, ignore_errors=True)


def create_backend(ctx: base.OperatorContext) -> views.KeyedStateBackend:
    """The keyed state backend the job's ``state.backend.type`` names, for subtask ``ctx``."""
    settings = ctx.state_backend
    if settings.type is config.StateBackendType.ROCKSDB:
        return rocksdb.RocksDBKeyedStateBackend(
            settings.local_dir or tempfile.gettempdir(),
            f"{ctx.job_id}-{ctx.uid}-{ctx.subtask_index}-a{ctx.attempt}",
            functools.partial(keygroups.key_group, max_parallelism=ctx.max_parallelism),
            settings,
            (ctx.key_group_range.start, ctx.key_group_range.end),
            local_state_dir(ctx, ctx.job_id),
        )
    return heap.KeyedStateBackend()


class ReduceOperator(KeyedOperator):
    """Rolling reduce: emits the updated value for every input record (as Flink)."""

    def __init__(self, key_selector: functions.KeySelector, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__(key_selector)
        self.fn = fn

    def open(self) -> None:
        self.table = self.backend.table("reduce")

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        key_of, fn, table = self.key_selector, self.fn, self.table
        get = table.get
        out = []
        for v in values:
            k = key_of(v)
            prev = get(k, _MISSING)
            r = v if prev is _MISSING else fn(prev, v)
            table[k] = r
            out.append(r)
        self.output.emit(out, timestamps)


class AggregateOperator(KeyedOperator):
    """Rolling aggregate: emits ``get_result`` of the updated accumulator per record."""

    def __init__(
        self, key_selector: functions.KeySelector, agg: functions.AggregateFunction[Any, Any, Any]
    ) -> None:
        super().__init__(key_selector)
        self.agg = agg

    def open(self) -> None:
        self.table = self.backend.table("aggregate")

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        key_of, agg, table = self.key_selector, self.agg, self.table
        add, result, create = agg.add, agg.get_result, agg.create_accumulator
        get = table.get
        out = []
        for v in values:
            k = key_of(v)
            acc = get(k, _MISSING)
            acc = add(v, create() if acc is _MISSING else acc)
            table[k] = acc
            out.append(result(acc))
        self.output.emit(out, timestamps)


class ProcessOperator(KeyedOperator):
    """Runs a :class:`functions.KeyedProcessFunction` with keyed state and timers."""

    def __init__(
        self, key_selector: functions.KeySelector, fn: functions.KeyedProcessFunction
    ) -> None:
        super().__init__(key_selector)
        self.fn = fn

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        super().initialize_state(restored)
        # Saved with the state (see base.restored_watermark): what the function sees
        # as the current watermark resumes where the replaced attempt had it.
        self.saved_watermark = base.MIN_WATERMARK
        if restored is not None:
            self.saved_watermark = base.restored_watermark(restored)

    def open(self) -> None:
        self.event_timers = views.TimerQueue(self.backend, "__event_timers__")
        self.processing_timers = views.TimerQueue(self.backend, "__processing_timers__")
        self.timers = functions.TimerService(
            self.backend, self.event_timers, self.processing_timers
        )
        self.timers.watermark = self.saved_watermark
        self.context = functions.KeyedContext(self.backend, self.timers)
        self.fn.open(self.context)

    def _collect(
        self, produced: Iterable[Any] | None, ts: int | None, out: list[Any], out_ts: list[int]
    ) -> None:
        if produced is None:
            return
        before = len(out)
        out.extend(produced)
        if ts is not None:
            out_ts.extend([ts] * (len(out) - before))

    def _emit(self, out: list[Any], out_ts: list[int]) -> None:
        if out:
            self.output.emit(out, out_ts if len(out_ts) == len(out) else None)

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        key_of, backend, ctx = self.key_selector, self.backend, self.context
        process = self.fn.process_element
        out: list[Any] = []
        out_ts: list[int] = []
        if timestamps is None:
            ctx.timestamp = None  # once per batch: the engine alone sets it
            for v in values:
                backend.current_key = key_of(v)
                produced = process(v, ctx)
                if produced is not None:
                    out.extend(produced)
            self._emit(out, out_ts)
            return
        for v, ts in zip(values, timestamps, strict=True):
            backend.current_key = key_of(v)
            ctx.timestamp = ts
            produced = process(v, ctx)
            if produced is not None:
                before = len(out)
                out.extend(produced)
                out_ts.extend([ts] * (len(out) - before))
        self._emit(out, out_ts)

    def operator_state(self) -> list[Any]:
        return base.saved_watermark(self.saved_watermark)

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        snap = super().snapshot_state(checkpoint_id)
        if isinstance(self.backend, heap.KeyedStateBackend):
            # Unchanged timer tables go in as their previous pickle (see TimerQueue).
            for queue in (self.event_timers, self.processing_timers):
                if queue.name in snap.keyed:
                    snap.keyed[queue.name] = queue.snapshot_table()
        return snap

    def process_watermark(self, watermark: int) -> None:
        if watermark <= self.timers.watermark:
            return  # at or behind the restored watermark: nothing new is due
        self.timers.watermark = watermark
        if watermark < base.MAX_WATERMARK:
            self.saved_watermark = watermark
        out: list[Any] = []
        out_ts: list[int] = []
        for time, key in self.event_timers.pop_due(watermark):
            self.backend.current_key = key
            self.context.timestamp = time
            self._collect(self.fn.on_timer(time, self.context), time, out, out_ts)
        self._emit(out, out_ts)
        self.output.emit_watermark(watermark)

    def on_processing_time(self, now_ms: int) -> None:
        out: list[Any] = []
        out_ts: list[int] = []
        for time, key in self.processing_timers.pop_due(now_ms):
            self.backend.current_key = key
            self.context.timestamp = None
            self._collect(self.fn.on_timer(time, self.context), None, out, out_ts)
        self._emit(out, out_ts)
