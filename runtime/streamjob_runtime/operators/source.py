"""Sources: the split-based contract connectors implement, and the operator running them."""

from __future__ import annotations

import abc
from typing import Any

from streamjob_runtime import windows
from streamjob_runtime.operators import base


class SourceReader(abc.ABC):
    """Reads the splits assigned to one source subtask.

    ``poll`` must never block: it returns what is available now (possibly
    nothing) or ``None`` once every split is exhausted.  ``snapshot`` returns the
    splits with their current positions, so that a restored reader resumes
    exactly after the last record it returned.
    """

    @abc.abstractmethod
    def add_splits(self, splits: list[Any]) -> None: ...

    @abc.abstractmethod
    def poll(self, max_records: int) -> list[Any] | None: ...

    @abc.abstractmethod
    def snapshot(self) -> list[Any]: ...

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


class SourceOperator(base.StreamOperator):
    """Drives a :class:`SourceReader`: assigns splits, timestamps and watermarks.

    The head of a source task: the task calls :meth:`emit_next` instead of
    :meth:`process_batch`.
    """

    def __init__(self, source: Source, strategy: windows.WatermarkStrategy | None) -> None:
        self.source = source
        self.strategy = strategy
        self.max_ts = base.MIN_WATERMARK
        self.watermark = base.MIN_WATERMARK

    def setup(self, ctx: base.OperatorContext, output: base.Output) -> None:
        super().setup(ctx, output)
        self.reader = self.source.create_reader(ctx.subtask_index, ctx.parallelism)

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        if restored is None:
            splits = self.source.create_splits(self.ctx.parallelism)
        else:
            splits = [s for former in restored.operator for s in former]
        mine = [
            s for s in splits if split_index(s) % self.ctx.parallelism == self.ctx.subtask_index
        ]
        self.reader.add_splits(mine)

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        raise TypeError("a source operator has no input")

    def emit_next(self, max_records: int) -> int | None:
        """Emit up to ``max_records``; the number emitted, or None at the end of input."""
        values = self.reader.poll(max_records)
        if values is None:
            return None
        if not values:
            return 0
        strategy = self.strategy
        if strategy is None or strategy.timestamp_assigner is None:
            self.output.emit(values, None)
            return len(values)
        assign = strategy.timestamp_assigner
        timestamps = [assign(v) for v in values]
        self.output.emit(values, timestamps)
        batch_max = max(timestamps)
        if batch_max > self.max_ts:
            self.max_ts = batch_max
            watermark = batch_max - strategy.max_out_of_orderness_ms - 1
            if watermark > self.watermark:
                self.watermark = watermark
                self.output.emit_watermark(watermark)
        return len(values)

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        return base.OperatorSnapshot(operator=self.reader.snapshot())

    def close(self) -> None:
        self.reader.close()
