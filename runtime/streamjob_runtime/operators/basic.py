"""Stateless one-input operators: map, filter, flat_map."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain, compress
from typing import Any

from streamjob_runtime.operators import base


class MapOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        self.output.emit(list(map(self.fn, values)), timestamps)


class FilterOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], bool]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        if timestamps is None:
            kept = list(filter(self.fn, values))
            if kept:
                self.output.emit(kept, None)
            return
        if len(timestamps) != len(values):
            raise ValueError(f"{len(values)} records but {len(timestamps)} timestamps")
        keep = list(map(bool, map(self.fn, values)))
        kept = list(compress(values, keep))
        if kept:
            self.output.emit(kept, list(compress(timestamps, keep)))


class FlatMapOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        fn = self.fn
        if timestamps is None:
            flat = list(chain.from_iterable(map(fn, values)))
            if flat:
                self.output.emit(flat, None)
            return
        out: list[Any] = []
        out_ts: list[int] = []
        for v, t in zip(values, timestamps, strict=True):
            before = len(out)
            out.extend(fn(v))
            out_ts.extend([t] * (len(out) - before))
        if out:
            self.output.emit(out, out_ts)
