"""The ``hashmap`` state backend: keyed state in Python dicts, on the heap.

Each named state is one table ``{key: value}``.  Operators with a hot path
(reduce, windows) use tables directly; user functions use the
:class:`ValueState` / :class:`ListState` / :class:`MapState` views, which
address the table through the backend's current key, as Flink's do.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

V = TypeVar("V")
K = TypeVar("K")


class KeyedStateBackend:
    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self.current_key: Any = None

    def table(self, name: str) -> dict[Any, Any]:
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = {}
        return table

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        for name, entries in tables.items():
            self.table(name).update(entries)

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """The live tables: the caller serialises them before the next record."""
        return {name: table for name, table in self.tables.items() if table}


class _View:
    def __init__(self, backend: KeyedStateBackend, name: str) -> None:
        self._backend = backend
        self._table = backend.table(name)

    def clear(self) -> None:
        self._table.pop(self._backend.current_key, None)


class ValueState(_View, Generic[V]):
    def __init__(self, backend: KeyedStateBackend, name: str, default: V | None = None) -> None:
        super().__init__(backend, name)
        self._default = default

    def value(self) -> V | None:
        return self._table.get(self._backend.current_key, self._default)

    def update(self, value: V) -> None:
        self._table[self._backend.current_key] = value


class ListState(_View, Generic[V]):
    def get(self) -> list[V]:
        return list(self._table.get(self._backend.current_key, ()))

    def add(self, value: V) -> None:
        self._table.setdefault(self._backend.current_key, []).append(value)

    def update(self, values: list[V]) -> None:
        self._table[self._backend.current_key] = list(values)


class MapState(_View, Generic[K, V]):
    def _map(self) -> dict[K, V]:
        return self._table.setdefault(self._backend.current_key, {})  # type: ignore[no-any-return]

    def get(self, key: K) -> V | None:
        return self._table.get(self._backend.current_key, {}).get(key)  # type: ignore[no-any-return]

    def put(self, key: K, value: V) -> None:
        self._map()[key] = value

    def contains(self, key: K) -> bool:
        return key in self._table.get(self._backend.current_key, {})

    def remove(self, key: K) -> None:
        entries = self._table.get(self._backend.current_key)
        if entries is not None:
            entries.pop(key, None)
            if not entries:
                del self._table[self._backend.current_key]

    def items(self) -> Iterator[tuple[K, V]]:
        return iter(list(self._table.get(self._backend.current_key, {}).items()))

    def keys(self) -> list[K]:
        return list(self._table.get(self._backend.current_key, {}))

    def is_empty(self) -> bool:
        return not self._table.get(self._backend.current_key)


class TimerQueue:
    """Timers of one kind (event time or processing time), at most one per (key, time).

    The timers of a key live in a keyed state table, so they are checkpointed and
    redistributed by key group like any other keyed state.  A key's entry is a
    plain int while it has one timer (the common case, and several times cheaper
    to checkpoint than a set) and a set of ints beyond that.
    """

    def __init__(self, backend: KeyedStateBackend, name: str) -> None:
        self._by_key: dict[Any, int | set[int]] = backend.table(name)
        self._heap: list[tuple[int, int, Any]] = []
        self._seq = itertools.count()
        for key, times in self._by_key.items():
            for t in (times,) if isinstance(times, int) else times:
                self._heap.append((t, next(self._seq), key))
        heapq.heapify(self._heap)

    def _has(self, key: Any, time: int) -> bool:
        times = self._by_key.get(key)
        return times == time if isinstance(times, int) else times is not None and time in times

    def register(self, key: Any, time: int) -> None:
        times = self._by_key.get(key)
        if times is None:
            self._by_key[key] = time
        elif isinstance(times, int):
            if times == time:
                return
            self._by_key[key] = {times, time}
        elif time in times:
            return
        else:
            times.add(time)
        heapq.heappush(self._heap, (time, next(self._seq), key))

    def delete(self, key: Any, time: int) -> None:
        """Forget the timer; its heap entry is skipped when it surfaces."""
        times = self._by_key.get(key)
        if times is None:
            return
        if isinstance(times, int):
            if times == time:
                del self._by_key[key]
            return
        times.discard(time)
        if len(times) == 1:
            self._by_key[key] = next(iter(times))
        elif not times:
            del self._by_key[key]

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, up_to: int) -> Iterator[tuple[int, Any]]:
        """Yield (time, key) for timers with time <= ``up_to``, in time order."""
        heap = self._heap
        while heap and heap[0][0] <= up_to:
            time, _, key = heapq.heappop(heap)
            if not self._has(key, time):
                continue
            self.delete(key, time)
            yield time, key
