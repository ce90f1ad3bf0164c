"""The keyed state API, the same on every state backend.

A backend holds named *tables*, each mapping a record key to that key's value
(:class:`StateTable`): a ``dict`` on the ``hashmap`` backend, a RocksDB column
family on the ``rocksdb`` backend.  Operators with a hot path (reduce,
aggregate) use tables directly; user functions use :class:`ValueState`,
:class:`ListState` and :class:`MapState`, which address a table through the
backend's current key, as Flink's do.  Each view may have a time-to-live
(:mod:`streamjob_runtime.state.ttl`), with the same semantics on every backend.

A value read from a table may be a copy (RocksDB deserialises it), so every
change here is written back with ``table[key] = value``; mutating a value read
from a table in place is not a change of state.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar, overload

from streamjob_runtime.state import serialization, ttl

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


class MapValue(dict[Any, Any]):
    """The canonical (snapshot) form of one key's map state: a ``dict`` marked as a map.

    The mark lets a backend restore a map state from a snapshot as one entry per
    map key (``rocksdb``), whichever backend wrote the snapshot.
    """


class MapTable(Protocol):
    """One named map state: (record key, map key) -> stored value, one entry per map key."""

    def get(self, key: Any, map_key: Any, /) -> Any:
        """The stored value, ``None`` if there is none."""
        ...

    def contains(self, key: Any, map_key: Any, /) -> bool: ...

    def put(self, key: Any, map_key: Any, value: Any, /) -> None: ...

    def remove(self, key: Any, map_key: Any, /) -> None:
        """Delete the entry (no error if there is none)."""
        ...

    def entries(self, key: Any, /) -> list[tuple[Any, Any]]:
        """All (map key, stored value) pairs of ``key``, read now."""
        ...

    def clear(self, key: Any, /) -> None: ...

    def is_empty(self, key: Any, /) -> bool: ...


class KeyedStateBackend(Protocol):
    """Flink's ``KeyedStateBackend``: named tables and the key that views address."""

    current_key: Any

    def table(self, name: str) -> StateTable: ...

    def map_table(self, name: str) -> MapTable:
        """The map state ``name``; a name is either a table or a map table, never both."""
        ...

    def set_ttl(self, name: str, config: ttl.StateTtlConfig, clock: ttl.Clock) -> None:
        """State ``name`` has a TTL: full snapshots leave its expired entries out (if so
        configured), and :meth:`cleanup` may delete them."""
        ...

    def cleanup(self, name: str, budget: int) -> None:
        """Incremental TTL cleanup: check about ``budget`` more entries of ``name`` and
        delete the expired ones (round-robin over the state)."""
        ...

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Add restored entries (this subtask's key groups only) to the tables."""
        ...

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """A full snapshot in the canonical, backend-independent form: name -> {key: value}.

        A map state's values are :class:`MapValue` dicts.  The caller serialises
        it before the next record is processed.
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


_ABSENT: Any = object()


class _Ttl:
    """The TTL rules shared by the ``Ttl*`` states (Flink's ``AbstractTtlDecorator``).

    Separate classes, so that a state without a TTL pays nothing for it.
    """

    def __init__(
        self,
        backend: KeyedStateBackend,
        name: str,
        ttl_config: ttl.StateTtlConfig,
        clock: ttl.Clock,
    ) -> None:
        self._ttl = ttl_config
        self._clock = clock
        self._name = name
        self._ttl_backend = backend
        backend.set_ttl(name, ttl_config, clock)
        self._cleanup_size = ttl_config.cleanup_incremental_size

    def _accessed(self) -> None:
        """After each access (never between a read and its write-back): incremental cleanup."""
        if self._cleanup_size:
            self._ttl_backend.cleanup(self._name, self._cleanup_size)

    def _read(self, stored: Any, clear: Callable[[], None], rewrite: Callable[[Any], None]) -> Any:
        """The user value of a stored entry (``_ABSENT`` if none), by Flink's TTL rules:
        an expired entry is cleared, and returned this once if the visibility allows;
        a live one is renewed on read with ``ON_READ_AND_WRITE``."""
        if stored is None:
            return _ABSENT
        config = self._ttl
        now = self._clock()
        if stored.timestamp + config.ttl_ms <= now:
            clear()
            return stored.value if config.return_expired else _ABSENT
        if config.update_on_read:
            rewrite(ttl.TtlValue(stored.value, now))
        return stored.value

    def _wrap(self, value: Any) -> ttl.TtlValue:
        return ttl.TtlValue(value, self._clock())


class TtlValueState(ValueState[V], _Ttl):
    """A :class:`ValueState` whose value expires (see :mod:`streamjob_runtime.state.ttl`)."""

    def __init__(
        self,
        backend: KeyedStateBackend,
        name: str,
        default: V | None,
        ttl_config: ttl.StateTtlConfig,
        clock: ttl.Clock = ttl.processing_time,
    ) -> None:
        ValueState.__init__(self, backend, name, default)
        _Ttl.__init__(self, backend, name, ttl_config, clock)

    def value(self) -> V | None:
        key, table = self._backend.current_key, self._table
        value = self._read(
            table.get(key), lambda: table.pop(key, None), lambda v: table.__setitem__(key, v)
        )
        self._accessed()
        return self._default if value is _ABSENT else value

    def update(self, value: V) -> None:
        self._table[self._backend.current_key] = self._wrap(value)
        self._accessed()


class TtlListState(ListState[V], _Ttl):
    """A :class:`ListState` whose elements expire one by one."""

    def __init__(
        self,
        backend: KeyedStateBackend,
        name: str,
        ttl_config: ttl.StateTtlConfig,
        clock: ttl.Clock = ttl.processing_time,
    ) -> None:
        ListState.__init__(self, backend, name)
        _Ttl.__init__(self, backend, name, ttl_config, clock)

    def get(self) -> list[V]:
        key = self._backend.current_key
        stored = self._table.get(key)
        if not stored:
            return []
        now, config = self._clock(), self._ttl
        out, kept = [], []
        for element in stored:
            if element.timestamp + config.ttl_ms <= now:
                if config.return_expired:
                    out.append(element.value)
                continue
            out.append(element.value)
            kept.append(ttl.TtlValue(element.value, now) if config.update_on_read else element)
        if not kept:
            del self._table[key]
        elif len(kept) != len(stored) or config.update_on_read:
            self._table[key] = kept
        self._accessed()
        return out

    def add(self, value: V) -> None:
        super().add(self._wrap(value))  # type: ignore[arg-type]
        self._accessed()

    def update(self, values: list[V]) -> None:
        if not values:
            self.clear()
        else:
            self._table[self._backend.current_key] = [self._wrap(v) for v in values]
        self._accessed()


class MapState(Generic[K, V]):
    """A map per key, one stored entry per map key (a large map is never read or written
    whole on ``rocksdb``); with a TTL each entry expires on its own."""

    def __init__(
        self,
        backend: KeyedStateBackend,
        name: str,
        ttl_config: ttl.StateTtlConfig | None = None,
        clock: ttl.Clock = ttl.processing_time,
    ) -> None:
        self._backend = backend
        self._map = backend.map_table(name)
        self._ttl_rules = None if ttl_config is None else _Ttl(backend, name, ttl_config, clock)

    def _entry(self, key: Any, map_key: K) -> Any:
        table, rules = self._map, self._ttl_rules
        if rules is None:
            return table.get(key, map_key) if table.contains(key, map_key) else _ABSENT
        value = rules._read(
            table.get(key, map_key),
            lambda: table.remove(key, map_key),
            lambda v: table.put(key, map_key, v),
        )
        rules._accessed()
        return value

    def get(self, key: K) -> V | None:
        value = self._entry(self._backend.current_key, key)
        return None if value is _ABSENT else value

    def put(self, key: K, value: V) -> None:
        rules = self._ttl_rules
        if rules is None:
            self._map.put(self._backend.current_key, key, value)
            return
        self._map.put(self._backend.current_key, key, rules._wrap(value))
        rules._accessed()

    def contains(self, key: K) -> bool:
        return self._entry(self._backend.current_key, key) is not _ABSENT

    def remove(self, key: K) -> None:
        self._map.remove(self._backend.current_key, key)

    def clear(self) -> None:
        self._map.clear(self._backend.current_key)

    def items(self) -> Iterator[tuple[K, V]]:
        current, table, rules = self._backend.current_key, self._map, self._ttl_rules
        entries = table.entries(current)
        if rules is None:
            return iter(entries)
        config = rules._ttl
        now = rules._clock()
        out = []
        for map_key, stored in entries:
            if stored.timestamp + config.ttl_ms <= now:
                table.remove(current, map_key)
                if config.return_expired:
                    out.append((map_key, stored.value))
                continue
            if config.update_on_read:
                table.put(current, map_key, ttl.TtlValue(stored.value, now))
            out.append((map_key, stored.value))
        rules._accessed()
        return iter(out)

    def keys(self) -> list[K]:
        return [k for k, _ in self.items()]

    def is_empty(self) -> bool:
        if self._ttl_rules is None:
            return self._map.is_empty(self._backend.current_key)
        return not any(True for _ in self.items())


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
