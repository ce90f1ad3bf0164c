"""Sources: the split-based contract connectors implement, and the operator running them."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob_runtime import windows
from streamjob_runtime.operators import base, watermarks


@dataclass
class SplitRecords:
    """What one poll read from one split: records in the split's order.

    ``finished`` says the split has no record after these (``values`` may then
    be empty); a reader reports it once per split it was given, also for a
    split that was already exhausted when it was restored.
    """

    split: int
    values: list[Any]
    finished: bool = False


class SourceReader(abc.ABC):
    """Reads the splits assigned to one source subtask.

    ``poll`` must never block: it returns what is available now, per split
    (possibly nothing), or ``None`` once every split is exhausted and reported
    finished.  Per-split results let the source operator keep one watermark per
    split.  ``snapshot`` returns the splits with their current positions, so
    that a restored reader resumes exactly after the last record it returned.
    """

    @abc.abstractmethod
    def add_splits(self, splits: list[Any]) -> None: ...

    @abc.abstractmethod
    def poll(self, max_records: int) -> list[SplitRecords] | None: ...

    @abc.abstractmethod
    def snapshot(self) -> list[Any]: ...

    def snapshot_state(self, checkpoint_id: int) -> list[Any]:
        """:meth:`snapshot` for checkpoint ``checkpoint_id`` (readers that track checkpoints)."""
        return self.snapshot()

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` completed (e.g. commit offsets for monitoring)."""

    def backoff_s(self) -> float:
        """After an empty poll: how long to wait before polling again."""
        return 0.01

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files or connections."""


class Source(abc.ABC):
    """A replayable source made of splits (each split has an int ``index``)."""

    @abc.abstractmethod
    def create_splits(self, parallelism: int) -> list[Any]:
        """The splits of a fresh start (no restored state)."""

    @abc.abstractmethod
    def create_reader(self, subtask_index: int, parallelism: int) -> SourceReader: ...


def split_index(split: Any) -> int:
    return int(split.index)


@dataclass
class SourceSplitState:
    """A split as a checkpoint holds it: its position (the connector's split) and watermark.

    Restoring the watermark with the split keeps event time where the failed
    or stopped attempt had it, at any parallelism: records that attempt
    dropped as late are dropped again, and a split moved to another reader
    does not hold back or run ahead of that reader's other splits.
    """

    split: Any
    watermark: int


class SourceOperator(base.StreamOperator):
    """Drives a :class:`SourceReader`: assigns splits, timestamps and watermarks.

    The head of a source task: the task calls :meth:`emit_next` instead of
    :meth:`process_batch`.  Each split has its own watermark (``max timestamp
    seen in that split - max_out_of_orderness - 1``); the operator emits the
    minimum over its splits that are neither finished nor idle
    (:class:`watermarks.WatermarkOutputMultiplexer`).
    """

    def __init__(self, source: Source, strategy: windows.WatermarkStrategy | None) -> None:
        self.source = source
        self.strategy = strategy
        self.watermarks = watermarks.WatermarkOutputMultiplexer()
        self._last_active: dict[int, float] = {}  # split -> when it last had records
        self.clock: Callable[[], float] = time.monotonic

    def setup(self, ctx: base.OperatorContext, output: base.Output) -> None:
        super().setup(ctx, output)
        self.reader = self.source.create_reader(ctx.subtask_index, ctx.parallelism)

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        if restored is None:
            fresh = self.source.create_splits(self.ctx.parallelism)
            states = [SourceSplitState(s, base.MIN_WATERMARK) for s in fresh]
        else:
            # Checkpoints written before split watermarks hold bare splits.
            states = [
                s if isinstance(s, SourceSplitState) else SourceSplitState(s, base.MIN_WATERMARK)
                for former in restored.operator
                for s in former
            ]
        mine = [
            s
            for s in states
            if split_index(s.split) % self.ctx.parallelism == self.ctx.subtask_index
        ]
        now = self.clock()
        for s in mine:
            self.watermarks.register(split_index(s.split), s.watermark)
            self._last_active[split_index(s.split)] = now
        self.reader.add_splits([s.split for s in mine])

    def open(self) -> None:
        # Downstream hears the restored event time before any replayed record.
        if self.strategy is not None and self.strategy.timestamp_assigner is not None:
            self._emit_watermark()

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        raise TypeError("a source operator has no input")

    def _emit_watermark(self) -> None:
        watermark = self.watermarks.advance()
        if watermark is not None:
            self.output.emit_watermark(watermark)

    def emit_next(self, max_records: int) -> int | None:
        """Emit up to ``max_records``; the number emitted, or None at the end of input."""
        polled = self.reader.poll(max_records)
        if polled is None:
            return None
        if len(polled) == 1:
            values = polled[0].values
        else:
            values = []
            for part in polled:
                values.extend(part.values)
        strategy = self.strategy
        if strategy is None or strategy.timestamp_assigner is None:
            if values:
                self.output.emit(values, None)
            return len(values)
        assign, mux = strategy.timestamp_assigner, self.watermarks
        lag = strategy.max_out_of_orderness_ms + 1
        timestamps = list(map(assign, values))
        start = 0
        for part in polled:
            if part.values:
                end = start + len(part.values)
                mux.on_watermark(part.split, max(timestamps[start:end]) - lag)
                start = end
        if strategy.idle_timeout_ms is not None:
            self._track_idleness(polled, strategy.idle_timeout_ms)
        if values:
            self.output.emit(values, timestamps)
        self._emit_watermark()
        finished = [part.split for part in polled if part.finished]
        if finished:
            # Only now: the last records of a finished split still count.
            for split in finished:
                mux.unregister(split)
                self._last_active.pop(split, None)
            self._emit_watermark()
        return len(values)

    def _track_idleness(self, polled: list[SplitRecords], idle_timeout_ms: int) -> None:
        now = self.clock()
        last, mux = self._last_active, self.watermarks
        for part in polled:
            if part.values:
                last[part.split] = now
                mux.mark_active(part.split)
        deadline = now - idle_timeout_ms / 1000
        for split, seen in last.items():
            if seen < deadline:
                mux.mark_idle(split)

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        split_watermark = self.watermarks.split_watermark
        return base.OperatorSnapshot(
            operator=[
                SourceSplitState(s, split_watermark(split_index(s)))
                for s in self.reader.snapshot_state(checkpoint_id)
            ]
        )

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        self.reader.notify_checkpoint_complete(checkpoint_id)

    def close(self) -> None:
        self.reader.close()
