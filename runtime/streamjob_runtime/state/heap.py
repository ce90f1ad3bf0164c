"""The ``hashmap`` state backend: keyed state in Python dicts, on the heap.

Each named state is one table ``{key: value}`` (a map state's value is a
:class:`views.MapValue` per key); the views over it are in
:mod:`streamjob_runtime.state.views`.  Fast, and bounded by the TaskManager's
memory; every checkpoint is a full snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streamjob_runtime.state import ttl, views


class HeapMapTable:
    """A map state on the heap: record key -> :class:`views.MapValue`, changed in place."""

    def __init__(self, table: dict[Any, Any]) -> None:
        self._table = table

    def get(self, key: Any, map_key: Any, /) -> Any:
        entries = self._table.get(key)
        return None if entries is None else entries.get(map_key)

    def contains(self, key: Any, map_key: Any, /) -> bool:
        entries = self._table.get(key)
        return entries is not None and map_key in entries

    def put(self, key: Any, map_key: Any, value: Any, /) -> None:
        entries = self._table.get(key)
        if entries is None:
            self._table[key] = views.MapValue({map_key: value})
        else:
            entries[map_key] = value

    def remove(self, key: Any, map_key: Any, /) -> None:
        entries = self._table.get(key)
        if entries is None or map_key not in entries:
            return
        del entries[map_key]
        if not entries:
            del self._table[key]

    def entries(self, key: Any, /) -> list[tuple[Any, Any]]:
        return list(self._table.get(key, {}).items())

    def clear(self, key: Any, /) -> None:
        self._table.pop(key, None)

    def is_empty(self, key: Any, /) -> bool:
        return not self._table.get(key)


class KeyedStateBackend:
    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, Any]] = {}
        self.current_key: Any = None
        self._ttl: dict[str, tuple[ttl.StateTtlConfig, ttl.Clock]] = {}
        self._cursors: dict[str, Iterator[Any]] = {}

    def table(self, name: str) -> dict[Any, Any]:
        table = self.tables.get(name)
        if table is None:
            table = self.tables[name] = {}
        return table

    def map_table(self, name: str) -> HeapMapTable:
        return HeapMapTable(self.table(name))

    def set_ttl(self, name: str, config: ttl.StateTtlConfig, clock: ttl.Clock) -> None:
        self._ttl[name] = (config, clock)

    def cleanup(self, name: str, budget: int) -> None:
        """Check the next ``budget`` keys of ``name`` (from a copy of its keys, renewed
        after each full pass) and drop their expired values, elements, entries."""
        config, clock = self._ttl[name]
        table = self.table(name)
        cursor = self._cursors.get(name)
        now = clock()
        for _ in range(budget):
            key = next(cursor, _END) if cursor is not None else _END
            if key is _END:
                cursor = self._cursors[name] = iter(list(table))
                key = next(cursor, _END)
                if key is _END:
                    return
            stored = table.get(key)
            if stored is None:
                continue
            kept = ttl.without_expired(stored, config.ttl_ms, now)
            if kept is None:
                del table[key]
            elif kept is not stored:
                table[key] = kept

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        for name, entries in tables.items():
            self.table(name).update(entries)

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """The live tables (the caller serialises them before the next record); a state
        with a TTL and full-snapshot cleanup is copied without its expired entries."""
        out: dict[str, dict[Any, Any]] = {}
        for name, table in self.tables.items():
            if not table:
                continue
            entry = self._ttl.get(name)
            if entry is not None and entry[0].cleanup_full_snapshot:
                table = _unexpired(table, entry[0].ttl_ms, entry[1]())
            if table:
                out[name] = table
        return out

    def close(self) -> None:
        """Nothing to release: the tables go with the operator."""


_END: Any = object()


def _unexpired(table: dict[Any, Any], ttl_ms: int, now: int) -> dict[Any, Any]:
    out = {}
    for key, stored in table.items():
        kept = ttl.without_expired(stored, ttl_ms, now)
        if kept is not None:
            out[key] = kept
    return out
