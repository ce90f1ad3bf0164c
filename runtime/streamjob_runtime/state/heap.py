"""The ``hashmap`` state backend: keyed state in Python dicts, on the heap.

Each named state is one table ``{key: value}`` (a map state's value is a
:class:`views.MapValue` per key); the views over it are in
:mod:`streamjob_runtime.state.views`.  Fast, and bounded by the TaskManager's
memory.

Checkpoints (``execution.checkpointing.incremental``, on by default) are
incremental at the granularity of a table: a table found unchanged since the
previous checkpoint is written to ``<job dir>/shared/``, and once that
checkpoint completed later ones reference the file instead of writing the
table again (:class:`SharedTables`, :class:`IncrementalHeapState`); the
JobManager deletes such a file once no retained checkpoint references it, as
it does RocksDB's SST files (``state/shared.py``).  Which tables know they
are unchanged: the timer tables (:meth:`views.TimerQueue.snapshot_table`),
unchanged for as long as no timer is registered or fires (57 % of the bytes
of the keyed-count benchmark's checkpoints).  A value, list or map state is written whole at each
checkpoint: tracking which of its keys changed would cost every state write
about 50 ns (a ``set.add``), more than it saves when, as in the keyed-count
benchmark, every key changes between two checkpoints.  Savepoints are full.
"""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamjob_runtime.state import serialization, shared, storage, ttl, views


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


@dataclass
class IncrementalHeapState:
    """The keyed state of one ``hashmap`` subtask in an incremental checkpoint (pickled in
    its state file).

    ``inline``: the pickle of the tables written whole (name -> {key: value});
    ``shared``: state name -> path under the job's ``shared/`` of the pickle of a
    table that an earlier checkpoint stored (or this one, the first time).
    """

    inline: bytes
    shared: dict[str, str] = field(default_factory=dict)
    uploaded_bytes: int = 0

    def read(self, job_dir: Path) -> dict[str, dict[Any, Any]]:
        """All its tables, canonical form (name -> {key: value}); the shared ones are read
        from ``job_dir/shared/`` (a local directory: object storage is downloaded first)."""
        tables: dict[str, dict[Any, Any]] = pickle.loads(self.inline)
        for name, relative in self.shared.items():
            if not shared.inside(relative):
                raise ValueError(
                    f"shared file {relative!r} of state {name!r} is outside {job_dir}/shared:"
                    " the checkpoint is corrupt"
                )
            tables[name] = pickle.loads(storage.read_bytes(job_dir / shared.SHARED / relative))
        return tables


@dataclass
class _Stored:
    """A table (the object a snapshot returned) and where ``shared/`` holds its pickle."""

    table: serialization.PickledTable
    confirmed: str | None = None  # stored by a completed checkpoint: later ones reuse it
    pending: dict[int, str] = field(default_factory=dict)  # checkpoint id -> path it wrote


class SharedTables:
    """Which unchanged tables of one operator subtask are in ``shared/``, and when to reuse them.

    A table goes to ``shared/`` the second time a checkpoint sees the same
    :class:`serialization.PickledTable` object (so a table that changes at every
    checkpoint is never written twice over), under a fresh name; later
    checkpoints reference it only once the checkpoint that wrote it completed,
    as RocksDB's SST files (see ``state/shared.py`` for why that keeps the
    JobManager's reference counting from deleting a file an in-flight
    checkpoint needs).  Lives on the event loop (plan and confirm); the writes
    happen in :func:`upload`, off it.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # a directory under shared/, one per operator subtask
        self._stored: dict[str, _Stored] = {}

    def plan(
        self, checkpoint_id: int, tables: dict[str, dict[Any, Any]]
    ) -> tuple[dict[str, dict[Any, Any]], dict[str, str], list[tuple[str, bytes]]]:
        """Split a snapshot's tables: (written inline, referenced in ``shared/``: name ->
        path, to write to ``shared/`` now: (path, pickle))."""
        inline: dict[str, dict[Any, Any]] = {}
        refs: dict[str, str] = {}
        new: list[tuple[str, bytes]] = []
        for name, table in tables.items():
            stored = self._stored.get(name)
            if not isinstance(table, serialization.PickledTable):
                inline[name] = table
                continue
            if stored is None or stored.table is not table:
                self._stored[name] = _Stored(table)  # changed (or first seen): inline
                inline[name] = table
                continue
            if stored.confirmed is not None:
                refs[name] = stored.confirmed
                continue
            path = f"{self.prefix}/{uuid.uuid4().hex}.table"
            stored.pending[checkpoint_id] = path
            refs[name] = path
            new.append((path, table.data))
        for gone in set(self._stored) - set(tables):
            del self._stored[gone]  # empty now: a table that comes back starts over
        return inline, refs, new

    def forget(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` will not write what :meth:`plan` gave it."""
        for stored in self._stored.values():
            stored.pending.pop(checkpoint_id, None)

    def confirm(self, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` completed: what it wrote may be reused."""
        for stored in self._stored.values():
            path = stored.pending.pop(checkpoint_id, None)
            if path is not None:
                stored.confirmed = path
            for older in [c for c in stored.pending if c < checkpoint_id]:
                del stored.pending[older]  # never completed: never referenced again


def upload(
    inline: bytes,
    refs: dict[str, str],
    new: list[tuple[str, bytes]],
    job_dir: storage.Location,
) -> IncrementalHeapState:
    """Asynchronous part: write ``new`` to ``<job_dir>/shared/`` (durable on return).

    Blocking: run it in a thread.
    """
    shared.put_data(job_dir, new)
    return IncrementalHeapState(inline, refs, sum(len(data) for _, data in new))
