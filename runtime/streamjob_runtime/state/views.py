"""The keyed state API, the same on every state backend.

A backend holds named *tables*, each mapping a record key to that key's value
(:class:`StateTable`): a ``dict`` on the ``hashmap`` backend, a RocksDB column
family on the ``rocksdb`` backend.  Operators with a hot path (reduce,
aggregate) use tables directly; user functions use :class:`ValueState`,
:class:`ListState` and :class:`MapState`, which address a table through the
backend's current key, as Flink's do.

A value read from a table may be a copy (RocksDB deserialises it), so every
change here is written back with ``table[key] = value``; mutating a value read
from a table in place is not a change of state.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar, overload

from streamjob_runtime.state import serialization

V = TypeVar("V")
K = TypeVar("K")


class StateTable(Protocol):
    """The part of ``dict`` that keyed state uses: one named state, record key -> value."""

    @overload
    def get(self, key: Any, /) -> Any: ...

    @overload
    def get(self, key: Any, default: Any, /) -> Any: ...

    def __setitem__(self, key: Any, value: Any, /) -> None: ...

    def __delitem__(self, key: Any, /) -> None: ...

    def __contains__(self, key: object, /) -> bool: ...

    @overload
    def pop(self, key: Any, /) -> Any: ...

    @overload
    def pop(self, key: Any, default: Any, /) -> Any: ...

    def items(self) -> Iterable[tuple[Any, Any]]:
        """(key, value) pairs; the table must not change while they are iterated."""
        ...


class KeyedStateBackend(Protocol):
    """Flink's ``KeyedStateBackend``: named tables and the key that views address."""

    current_key: Any

    def table(self, name: str) -> StateTable: ...

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Add restored entries (this subtask's key groups only) to the tables."""
        ...

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """A full snapshot in the canonical, backend-independent form: name -> {key: value}.

        The caller serialises it before the next record is processed.
        """
        ...

    def close(self) -> None:
        """Release the backend's resources (files, handles); the state is gone after this."""
        ...


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
        return self._table.get(self._backend.current_key, self._default)  # type: ignore[no-any-return]

    def update(self, value: V) -> None:
        self._table[self._backend.current_key] = value


class ListState(_View, Generic[V]):
    def get(self) -> list[V]:
        return list(self._table.get(self._backend.current_key, ()))

    def add(self, value: V) -> None:
        key = self._backend.current_key
        values = self._table.get(key)
        if values is None:
            self._table[key] = [value]
        else:
            values.append(value)
            self._table[key] = values

    def update(self, values: list[V]) -> None:
        self._table[self._backend.current_key] = list(values)


class MapState(_View, Generic[K, V]):
    """A map per key, stored as one value (a whole ``dict``) per record key."""

    def get(self, key: K) -> V | None:
        return self._table.get(self._backend.current_key, {}).get(key)  # type: ignore[no-any-return]

    def put(self, key: K, value: V) -> None:
        current = self._backend.current_key
        entries = self._table.get(current)
        if entries is None:
            entries = {}
        entries[key] = value
        self._table[current] = entries

    def contains(self, key: K) -> bool:
        return key in self._table.get(self._backend.current_key, {})

    def remove(self, key: K) -> None:
        current = self._backend.current_key
        entries = self._table.get(current)
        if entries is None or key not in entries:
            return
        del entries[key]
        if entries:
            self._table[current] = entries
        else:
            del self._table[current]

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
    to checkpoint than a set) and a set of ints beyond that.  The time-ordered
    queue itself is rebuilt on the heap from the table when the operator opens,
    on both backends.
    """

    def __init__(self, backend: KeyedStateBackend, name: str) -> None:
        self.name = name
        self._by_key = backend.table(name)
        # Changes to the table so far, and the table pickled when there had been
        # _pickled_at of them (see snapshot_table).
        self._changes = 0
        self._pickled: serialization.PickledTable | None = None
        self._pickled_at = -1
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
            self._by_key[key] = times
        self._changes += 1
        heapq.heappush(self._heap, (time, next(self._seq), key))

    def delete(self, key: Any, time: int) -> None:
        """Forget the timer; its heap entry is skipped when it surfaces."""
        times = self._by_key.get(key)
        if times is None:
            return
        self._changes += 1  # maybe no such timer: an over-count only costs a fresh pickle
        if isinstance(times, int):
            if times == time:
                del self._by_key[key]
            return
        times.discard(time)
        if len(times) == 1:
            self._by_key[key] = next(iter(times))
        elif not times:
            del self._by_key[key]
        else:
            self._by_key[key] = times

    def snapshot_table(self) -> dict[Any, Any]:
        """The table for a full snapshot of the ``hashmap`` backend, with its pickle: the
        same object while no timer changed since the last call, so it is pickled once.

        Timers often outlive many checkpoints (one per key at the end of a window
        or of time); pickling an unchanged table again cost as much as the rest of
        the keyed count's state.  The result is pickled before the next record.
        """
        if self._pickled is None or self._pickled_at != self._changes:
            # A copy: the live table changes with the next timer, this snapshot must not.
            entries = dict(self._by_key.items())
            self._pickled = serialization.PickledTable(entries, serialization.dumps(entries))
            self._pickled_at = self._changes
        return self._pickled

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
