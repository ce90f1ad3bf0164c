"""Event-time window assigners and watermark strategies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob_runtime.functions import TimeWindow


@dataclass(frozen=True)
class TumblingEventTimeWindows:
    size_ms: int
    offset_ms: int = 0

    @classmethod
    def of(cls, size_ms: int, offset_ms: int = 0) -> TumblingEventTimeWindows:
        if size_ms <= 0:
            raise ValueError(f"window size must be > 0 ms, got {size_ms}")
        return cls(size_ms, offset_ms % size_ms)

    def window_ends(self, timestamp: int) -> tuple[int, ...]:
        start = timestamp - (timestamp - self.offset_ms) % self.size_ms
        return (start + self.size_ms,)

    def window_for_end(self, end: int) -> TimeWindow:
        return TimeWindow(end - self.size_ms, end)


@dataclass(frozen=True)
class SlidingEventTimeWindows:
    size_ms: int
    slide_ms: int
    offset_ms: int = 0

    @classmethod
    def of(cls, size_ms: int, slide_ms: int, offset_ms: int = 0) -> SlidingEventTimeWindows:
        if size_ms <= 0 or slide_ms <= 0:
            raise ValueError("window size and slide must be > 0 ms")
        return cls(size_ms, slide_ms, offset_ms % slide_ms)

    def window_ends(self, timestamp: int) -> tuple[int, ...]:
        last_start = timestamp - (timestamp - self.offset_ms) % self.slide_ms
        starts = range(last_start, timestamp - self.size_ms, -self.slide_ms)
        return tuple(s + self.size_ms for s in starts)

    def window_for_end(self, end: int) -> TimeWindow:
        return TimeWindow(end - self.size_ms, end)


WindowAssigner = TumblingEventTimeWindows | SlidingEventTimeWindows


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a source assigns event timestamps and generates watermarks.

    Each split of the source has its own watermark, ``max timestamp seen in the
    split - max_out_of_orderness - 1``; a source subtask emits the minimum over
    its splits that are neither finished nor idle.  Split watermarks are part
    of checkpoints and savepoints.
    """

    timestamp_assigner: Callable[[Any], int] | None = None
    max_out_of_orderness_ms: int = 0
    idle_timeout_ms: int | None = None

    @classmethod
    def no_watermarks(cls) -> WatermarkStrategy:
        return cls()

    @classmethod
    def for_monotonous_timestamps(cls) -> WatermarkStrategy:
        return cls(max_out_of_orderness_ms=0)

    @classmethod
    def for_bounded_out_of_orderness(cls, max_out_of_orderness_ms: int) -> WatermarkStrategy:
        if max_out_of_orderness_ms < 0:
            raise ValueError("max out-of-orderness must be >= 0 ms")
        return cls(max_out_of_orderness_ms=max_out_of_orderness_ms)

    def with_timestamp_assigner(self, assigner: Callable[[Any], int]) -> WatermarkStrategy:
        return dataclasses.replace(self, timestamp_assigner=assigner)

    def with_idleness(self, idle_timeout_ms: int) -> WatermarkStrategy:
        """A split without records for ``idle_timeout_ms`` stops holding the watermark back.

        As in Flink, records an idle split reads later may then be behind the
        watermark and be dropped as late.  When every split of a subtask is
        idle its watermark stays where it is.
        """
        if idle_timeout_ms <= 0:
            raise ValueError("idle timeout must be > 0 ms")
        return dataclasses.replace(self, idle_timeout_ms=idle_timeout_ms)
