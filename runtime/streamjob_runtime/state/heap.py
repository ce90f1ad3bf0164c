"""The ``hashmap`` state backend: keyed state in Python dicts, on the heap.

Each named state is one table ``{key: value}``; the views over it are in
:mod:`streamjob_runtime.state.views`.  Fast, and bounded by the TaskManager's
memory; every checkpoint is a full snapshot.
"""

from __future__ import annotations

from typing import Any


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

    def close(self) -> None:
        """Nothing to release: the tables go with the operator."""
