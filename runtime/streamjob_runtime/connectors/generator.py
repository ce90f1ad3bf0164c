"""A deterministic generator source: record ``i`` is ``fn(i)``.

Split ``j`` of ``n`` produces the indices ``j, j + n, j + 2n, ...`` below
``count``; its state is the next index, so a restored reader replays exactly
from the last checkpoint.  A subtask reads its splits in lockstep so event time
advances evenly across them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob_runtime.operators import source


@dataclass
class GeneratorSplit:
    index: int
    num_splits: int
    next_index: int


class GeneratorReader(source.SourceReader):
    def __init__(self, fn: Callable[[int], Any], count: int | None, rate: float | None) -> None:
        self.fn = fn
        self.count = count
        self.rate = rate
        self.splits: list[GeneratorSplit] = []
        self.started = time.monotonic()
        self.emitted = 0
        self._backoff = 0.0
        self._finished: set[int] = set()  # splits reported finished

    def add_splits(self, splits: list[Any]) -> None:
        self.splits.extend(GeneratorSplit(s.index, s.num_splits, s.next_index) for s in splits)

    def _active(self) -> list[GeneratorSplit]:
        if self.count is None:
            return self.splits
        return [s for s in self.splits if s.next_index < self.count]

    def _newly_finished(self) -> list[source.SplitRecords]:
        if self.count is None:
            return []
        count, reported = self.count, self._finished
        done = [s.index for s in self.splits if s.next_index >= count and s.index not in reported]
        reported.update(done)
        return [source.SplitRecords(index, [], finished=True) for index in done]

    def poll(self, max_records: int) -> list[source.SplitRecords] | None:
        active = self._active()
        if not active:
            return self._newly_finished() or None
        if self.rate is not None:
            my_rate = self.rate * len(self.splits) / self.splits[0].num_splits
            allowed = int(my_rate * (time.monotonic() - self.started)) - self.emitted
            if allowed <= 0:
                self._backoff = min(0.05, max(0.001, -allowed / my_rate + 1 / my_rate))
                return []
            max_records = min(max_records, allowed)
        per_split = max(1, max_records // len(active))
        fn, count = self.fn, self.count
        out: list[source.SplitRecords] = []
        for split in active:
            n = split.num_splits
            stop = split.next_index + per_split * n
            if count is not None:
                stop = min(stop, count)
            indices = range(split.next_index, stop, n)
            if indices:
                split.next_index = indices[-1] + n
                out.append(source.SplitRecords(split.index, list(map(fn, indices))))
                self.emitted += len(indices)
        out.extend(self._newly_finished())
        return out

    def backoff_s(self) -> float:
        return self._backoff

    def snapshot(self) -> list[Any]:
        return [GeneratorSplit(s.index, s.num_splits, s.next_index) for s in self.splits]


class GeneratorSource(source.Source):
    """``fn(i)`` for ``i`` in ``range(count)`` (unbounded when ``count`` is None).

    ``rate`` caps the total records per second across all subtasks; ``splits``
    fixes the number of splits (default: the parallelism of the first start).
    """

    def __init__(
        self,
        fn: Callable[[int], Any],
        count: int | None = None,
        rate: float | None = None,
        splits: int | None = None,
    ) -> None:
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 records per second")
        self.fn = fn
        self.count = count
        self.rate = rate
        self.splits = splits

    def create_splits(self, parallelism: int) -> list[Any]:
        n = self.splits or parallelism
        return [GeneratorSplit(j, n, j) for j in range(n)]

    def create_reader(self, subtask_index: int, parallelism: int) -> source.SourceReader:
        return GeneratorReader(self.fn, self.count, self.rate)
