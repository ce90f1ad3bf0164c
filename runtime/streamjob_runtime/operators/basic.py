"""Stateless one-input operators: map, filter, flat_map."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from streamjob_runtime.operators import base


class MapOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        fn = self.fn
        self.output.emit([fn(v) for v in values], timestamps)


class FilterOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], bool]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        fn = self.fn
        if timestamps is None:
            kept = [v for v in values if fn(v)]
            if kept:
                self.output.emit(kept, None)
            return
        pairs = [(v, t) for v, t in zip(values, timestamps, strict=True) if fn(v)]
        if pairs:
            self.output.emit([p[0] for p in pairs], [p[1] for p in pairs])


class FlatMapOperator(base.StreamOperator):
    def __init__(self, fn: Callable[[Any], Iterable[Any]]) -> None:
        self.fn = fn

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        fn = self.fn
        out: list[Any] = []
        if timestamps is None:
            for v in values:
                out.extend(fn(v))
            if out:
                self.output.emit(out, None)
            return
        out_ts: list[int] = []
        for v, t in zip(values, timestamps, strict=True):
            before = len(out)
            out.extend(fn(v))
            out_ts.extend([t] * (len(out) - before))
        if out:
            self.output.emit(out, out_ts)
