"""The ``rocksdb`` state backend: keyed state in an embedded RocksDB (through rocksdict).

One DB per operator subtask, in a fresh directory under the TaskManager's
local directory (``state.backend.rocksdb.localdir``), deleted when the
operator closes.  Each named state is a column family.  A RocksDB key is::

    key group (2 bytes, big-endian) | serialised record key

so the entries of a key-group range are one contiguous scan.  Keys and values
are serialised with a one-byte tag: ``int`` (64-bit), ``float`` and ``str``
without pickle, anything else with pickle.  Two record keys are the same
state key only if they serialise alike: ``1``, ``1.0`` and ``True`` are three
keys here, one key on the ``hashmap`` backend (keep key types consistent).

The write-ahead log is off, as in Flink: durability comes from checkpoints.
A savepoint (and a checkpoint when incremental checkpoints are off) is a full
snapshot in the canonical, backend-independent form (see
:meth:`RocksDBKeyedStateBackend.snapshot`), restorable into either backend.

Incremental checkpoints (Flink's): the synchronous part is a RocksDB
checkpoint, hard links to the DB's immutable SST files plus its small
metadata files (:meth:`RocksDBKeyedStateBackend.take_checkpoint`); the
asynchronous part (:func:`upload`) copies to ``<job dir>/shared/`` only the SST
files that no *confirmed* (completed) checkpoint of this DB uploaded already,
and returns an :class:`IncrementalKeyedState`: the shared files it references
and the metadata files inline.  The JobManager deletes a shared file once no
retained checkpoint references it (``checkpoint/shared.py``).

A map state is a column family ``map:<name>`` with one RocksDB entry per map
entry (:class:`RocksMapTable`); states with a TTL store their timestamps in
the values (:mod:`streamjob_runtime.state.ttl`).

Local recovery (``state.backend.local-recovery``): the RocksDB checkpoint
directory of each uploaded checkpoint is kept (hard links) under the
TaskManager's ``streamjob-localstate/tm-<pid>/<job>/<uid>-<subtask>/``, only
the newest completed one; a task restarted on the same TaskManager opens its DB
from that copy instead of checkpoint storage, and falls back to checkpoint
storage when the copy is missing, incomplete or does not open.

Not done: timers kept in RocksDB (the timer queue is rebuilt on the heap),
TTL cleanup in compaction (rocksdict has no compaction filter; the cleanup is
incremental, on access), and restoring a full (canonical) snapshot without
reading it into memory (it is one pickle).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import rocksdict

from streamjob_runtime import config, logs
from streamjob_runtime.state import shared, storage, ttl, views

log = logging.getLogger(__name__)

_INT = struct.Struct(">q")
_FLOAT = struct.Struct(">d")
_GROUP = struct.Struct(">H")
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1

_NO_DEFAULT: Any = object()
_RESTORE_BATCH_BYTES = 4 * 1024 * 1024
_CLEANUP_STEP = 256
_ENCODED_CACHE = 1 << 16  # keys; about 5 MiB for short keys
_TAG_PICKLE = 0
_TAG_INT = 1
_TAG_FLOAT = 2
_TAG_STR = 3
_TAG_TTL = 4
_TAG_BYTES = 5
_LEN = struct.Struct(">I")


def serialize(value: Any) -> bytes:
    """Tagged bytes of ``value``; equal plain values (int, float, str, bytes) give equal bytes.

    A :class:`ttl.TtlValue` is its timestamp (8 bytes) then its value, so TTL
    cleanup reads the timestamp without deserialising the value.
    """
    t = type(value)
    if t is int and _MIN_INT <= value <= _MAX_INT:
        return b"\x01" + _INT.pack(value)
    if t is str:
        text: str = value
        return b"\x03" + text.encode("utf-8", "surrogatepass")
    if t is float:
        return b"\x02" + _FLOAT.pack(value)
    if t is bytes:
        return b"\x05" + value  # type: ignore[no-any-return]
    if t is ttl.TtlValue:
        return b"\x04" + _INT.pack(value.timestamp) + serialize(value.value)
    data: bytes = pickle.dumps(value, protocol=5)
    return b"\x00" + data


def deserialize(data: bytes) -> Any:
    tag = data[0]
    if tag == _TAG_INT:
        return _INT.unpack_from(data, 1)[0]
    if tag == _TAG_STR:
        return data[1:].decode("utf-8", "surrogatepass")
    if tag == _TAG_FLOAT:
        return _FLOAT.unpack_from(data, 1)[0]
    if tag == _TAG_BYTES:
        return data[1:]
    if tag == _TAG_TTL:
        return ttl.TtlValue(deserialize(data[9:]), _INT.unpack_from(data, 1)[0])
    return pickle.loads(data[1:])


def _options(
    settings: config.StateBackendConfig | None = None, cache: rocksdict.Cache | None = None
) -> rocksdict.Options:
    """RocksDB options bounded in memory by ``settings`` (see :class:`config.StateBackendConfig`).

    ``cache``: the DB's block cache, shared by all its column families.
    """
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    if settings is None:
        return options
    options.set_write_buffer_size(settings.write_buffer_size)
    options.set_max_write_buffer_number(settings.write_buffer_count)
    # All memtables of the DB together, whatever the number of states (column families).
    options.set_db_write_buffer_size(settings.write_buffer_size * settings.write_buffer_count)
    options.set_max_background_jobs(settings.background_threads)
    table = rocksdict.BlockBasedOptions()
    table.set_block_size(settings.block_size)
    if cache is None:
        table.disable_cache()
    else:
        table.set_block_cache(cache)
        # Index and filter blocks in the cache too: otherwise they grow with the data.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    options.set_block_based_table_factory(table)
    return options


class RocksTable:
    """One named state (a column family) seen as the ``dict`` subset in ``views.StateTable``.

    Every read deserialises a fresh value: changing it in place changes nothing
    until it is written back.
    """

    def __init__(self, backend: RocksDBKeyedStateBackend, family: rocksdict.Rdict) -> None:
        self._key = backend.encode_key
        self._family = family
        self._family_get = family.get
        self._family_put = family.put

    def get(self, key: Any, default: Any = None, /) -> Any:
        data = self._family_get(self._key(key))
        return default if data is None else deserialize(data)

    def __getitem__(self, key: Any) -> Any:
        data = self._family_get(self._key(key))
        if data is None:
            raise KeyError(key)
        return deserialize(data)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._family_put(self._key(key), serialize(value))

    def __delitem__(self, key: Any) -> None:
        encoded = self._key(key)
        if self._family_get(encoded) is None:
            raise KeyError(key)
        self._family.delete(encoded)

    def __contains__(self, key: object) -> bool:
        return self._family_get(self._key(key)) is not None

    def pop(self, key: Any, default: Any = _NO_DEFAULT, /) -> Any:
        encoded = self._key(key)
        data = self._family_get(encoded)
        if data is None:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        self._family.delete(encoded)
        return deserialize(data)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs in key-group order, from a point-in-time view."""
        for k, v in self._family.items():
            yield deserialize(cast(bytes, k)[2:]), deserialize(cast(bytes, v))

    def items_in_groups(self, start: int, end: int) -> Iterator[tuple[Any, Any]]:
        """(key, value) pairs of key groups ``start..end`` (inclusive): one range scan."""
        return _scan(self._family, start, end)

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in self.items())

    def __len__(self) -> int:
        """Counts by a full scan: for tests and diagnostics, not the hot path."""
        return sum(1 for _ in self._family.keys())  # noqa: SIM118 - an Rdict, not a dict

    def close(self) -> None:
        self._family.close()

    def is_empty(self) -> bool:
        return next(iter(self._family.keys()), None) is None


class RocksMapTable:
    """A map state: one RocksDB entry per (record key, map key), in its own column family.

    The RocksDB key is ``key group | length of the serialised record key (4 bytes)
    | serialised record key | serialised map key``: the entries of one record
    key are one contiguous prefix, and those of a key-group range one scan.
    """

    def __init__(self, backend: RocksDBKeyedStateBackend, family: rocksdict.Rdict) -> None:
        self._prefix = backend.encode_map_prefix
        self._family = family

    def get(self, key: Any, map_key: Any, /) -> Any:
        data = self._family.get(self._prefix(key) + serialize(map_key))
        return None if data is None else deserialize(data)

    def lookup(self, key: Any, map_key: Any, default: Any, /) -> Any:
        """The stored value, ``default`` if there is none (a stored ``None`` is a value)."""
        data = self._family.get(self._prefix(key) + serialize(map_key))
        return default if data is None else deserialize(data)

    def contains(self, key: Any, map_key: Any, /) -> bool:
        return self._family.get(self._prefix(key) + serialize(map_key)) is not None

    def put(self, key: Any, map_key: Any, value: Any, /) -> None:
        self._family.put(self._prefix(key) + serialize(map_key), serialize(value))

    def remove(self, key: Any, map_key: Any, /) -> None:
        self._family.delete(self._prefix(key) + serialize(map_key))

    def _raw_entries(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._family.items(from_key=prefix):
            raw = cast(bytes, k)
            if not raw.startswith(prefix):
                return
            yield raw, cast(bytes, v)

    def entries(self, key: Any, /) -> list[tuple[Any, Any]]:
        prefix = self._prefix(key)
        n = len(prefix)
        return [(deserialize(k[n:]), deserialize(v)) for k, v in self._raw_entries(prefix)]

    def clear(self, key: Any, /) -> None:
        for k, _ in list(self._raw_entries(self._prefix(key))):
            self._family.delete(k)

    def is_empty(self, key: Any, /) -> bool:
        return next(self._raw_entries(self._prefix(key)), None) is None

    def all_keys(self) -> Iterator[tuple[Any, Any]]:
        """Every (record key, map key), reading no value."""
        for k in self._family.keys():  # noqa: SIM118 - an Rdict, not a dict
            record, map_key = _split_map_key(cast(bytes, k))
            yield deserialize(record), deserialize(map_key)

    def items(self) -> Iterator[tuple[Any, views.MapValue]]:
        """(record key, its whole map) pairs in key-group order, from a point-in-time view."""
        return _group_map_entries((cast(bytes, k), cast(bytes, v)) for k, v in self._family.items())

    def close(self) -> None:
        self._family.close()


def _split_map_key(raw: bytes) -> tuple[bytes, bytes]:
    """(serialised record key, serialised map key) of a map state's RocksDB key."""
    (length,) = _LEN.unpack_from(raw, 2)
    return raw[6 : 6 + length], raw[6 + length :]


def _group_map_entries(entries: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[Any, Any]]:
    """Raw map-state entries (in key order) as (record key, :class:`views.MapValue`)."""
    current: bytes | None = None
    entries_of: views.MapValue = views.MapValue()
    for raw, value in entries:
        record, map_key = _split_map_key(raw)
        if record != current:
            if current is not None:
                yield deserialize(current), entries_of
            current, entries_of = record, views.MapValue()
        entries_of[deserialize(map_key)] = deserialize(value)
    if current is not None:
        yield deserialize(current), entries_of


class RocksDBKeyedStateBackend:
    """Keyed state of one operator subtask in its own RocksDB.

    ``key_group_of`` maps a record key to its key group (the operator passes
    :func:`streamjob_runtime.graph.keygroups.key_group` bound to its max
    parallelism).  The DB is opened on first use, so an operator that never
    touches keyed state creates no files.
    """

    def __init__(
        self,
        local_dir: str | Path,
        name: str,
        key_group_of: Callable[[Any], int],
        settings: config.StateBackendConfig | None = None,
        key_groups: tuple[int, int] | None = None,
        local_copies: Path | None = None,
    ):
        # Local recovery: where this subtask keeps its last completed checkpoint (chk-<id>).
        self.local_copies = local_copies
        self.key_groups = key_groups  # this subtask's range, recorded in its checkpoints
        self._existing: set[str] = set()  # column families of a DB opened from a checkpoint
        self.settings = settings or config.StateBackendConfig(config.StateBackendType.ROCKSDB)
        self._cache = (
            rocksdict.Cache(self.settings.block_cache_size)
            if self.settings.block_cache_size
            else None
        )
        self.path = Path(local_dir) / "streamjob-rocksdb" / f"{name}-{uuid.uuid4().hex[:8]}"
        self.current_key: Any = None
        self._key_group_of = key_group_of
        self._db: rocksdict.Rdict | None = None
        self._tables: dict[str, RocksTable] = {}
        self._maps: dict[str, RocksMapTable] = {}
        self._ttl: dict[str, tuple[ttl.StateTtlConfig, ttl.Clock]] = {}
        self._cleanup_budget: dict[str, int] = {}
        self._cleanup_cursor: dict[str, bytes] = {}
        self._last_map_key: Any = object()
        self._last_map_prefix = b""
        self._write_options = rocksdict.WriteOptions()
        # An attribute at run time, though rocksdict's stub declares a method.
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        self._last_key: Any = object()
        self._last_encoded = b""
        self._encoded: dict[Any, bytes] = {}
        # Incremental checkpoints: SST name -> shared path, of the last confirmed checkpoint,
        # and of each checkpoint uploaded but not yet confirmed.
        self.confirmed_files: dict[str, str] = {}
        self.pending_files: dict[int, dict[str, str]] = {}

    def _open(self) -> rocksdict.Rdict:
        if self._db is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = rocksdict.Rdict(str(self.path), _options(self.settings, self._cache))
            self._db.set_write_options(self._write_options)
        return self._db

    def encode_key(self, key: Any) -> bytes:
        """Key group, big-endian, then the serialised key.

        Cached: the last key by identity (a function reads and writes one key), and
        exact ``int`` / ``str`` keys in a bounded dict (a key group is a hash).
        """
        if key is self._last_key:
            return self._last_encoded
        t = type(key)
        if t is int or t is str:
            encoded = self._encoded.get(key)
            if encoded is None:
                encoded = _GROUP.pack(self._key_group_of(key)) + serialize(key)
                if len(self._encoded) < _ENCODED_CACHE:  # full: the first keys stay
                    self._encoded[key] = encoded
        else:
            encoded = _GROUP.pack(self._key_group_of(key)) + serialize(key)
        self._last_key, self._last_encoded = key, encoded
        return encoded

    def encode_map_prefix(self, key: Any) -> bytes:
        """Key group, length of the serialised key, the serialised key (cached as above)."""
        if key is self._last_map_key:
            return self._last_map_prefix
        data = serialize(key)
        prefix = _GROUP.pack(self._key_group_of(key)) + _LEN.pack(len(data)) + data
        self._last_map_key, self._last_map_prefix = key, prefix
        return prefix

    def _family(self, cf_name: str) -> rocksdict.Rdict:
        db = self._open()
        if cf_name in self._existing:
            family = db.get_column_family(cf_name)
        else:
            family = db.create_column_family(cf_name, _options(self.settings, self._cache))
        family.set_write_options(self._write_options)
        return family

    def table(self, name: str) -> RocksTable:
        table = self._tables.get(name)
        if table is None:
            if name in self._maps:
                raise ValueError(f"state {name!r} is a map state; give other states other names")
            # Prefixed: a state may be called "default", RocksDB's own column family.
            table = self._tables[name] = RocksTable(self, self._family(f"state:{name}"))
        return table

    def map_table(self, name: str) -> RocksMapTable:
        table = self._maps.get(name)
        if table is None:
            if name in self._tables:
                raise ValueError(f"state {name!r} is not a map state; give map states other names")
            table = self._maps[name] = RocksMapTable(self, self._family(f"map:{name}"))
        return table

    def set_ttl(self, name: str, config: ttl.StateTtlConfig, clock: ttl.Clock) -> None:
        self._ttl[name] = (config, clock)

    def cleanup(self, name: str, budget: int) -> None:
        """Incremental TTL cleanup, in steps of at least ``_CLEANUP_STEP`` entries (an
        iterator per access would cost more than the check)."""
        pending = self._cleanup_budget.get(name, 0) + budget
        if pending < _CLEANUP_STEP:
            self._cleanup_budget[name] = pending
            return
        self._cleanup_budget[name] = 0
        config, clock = self._ttl[name]
        now, ttl_ms = clock(), config.ttl_ms
        is_map = name in self._maps
        family = (self._maps[name] if is_map else self.table(name))._family
        cursor = self._cleanup_cursor.get(name, b"")
        seen = 0
        last = cursor
        for k, v in family.items(from_key=cursor):
            raw, value = cast(bytes, k), cast(bytes, v)
            if raw == cursor:
                continue
            last = raw
            seen += 1
            if value[0] == _TAG_TTL:
                if _INT.unpack_from(value, 1)[0] + ttl_ms <= now:
                    family.delete(raw)
            elif not is_map:
                stored = deserialize(value)
                kept = ttl.without_expired(stored, ttl_ms, now)
                if kept is None:
                    family.delete(raw)
                elif kept is not stored and kept != stored:
                    family.put(raw, serialize(kept))
            if seen >= pending:
                break
        else:
            last = b""  # a full pass: start over
        self._cleanup_cursor[name] = last

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        """Add canonical entries; a table of :class:`views.MapValue` values is a map state."""
        for name, entries in tables.items():
            if not entries:
                continue
            db = self._open()
            is_map = isinstance(next(iter(entries.values())), views.MapValue)
            cf_name = f"map:{name}" if is_map else f"state:{name}"
            if is_map:
                self.map_table(name)
            else:
                self.table(name)
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.set_default_column_family(db.get_column_family_handle(cf_name))
            for key, value in entries.items():
                if is_map:
                    prefix = self.encode_map_prefix(key)
                    for map_key, entry in value.items():
                        batch.put(prefix + serialize(map_key), serialize(entry))
                else:
                    batch.put(self.encode_key(key), serialize(value))
                if batch.size_in_bytes() >= _RESTORE_BATCH_BYTES:
                    db.write(batch, self._write_options)
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    batch.set_default_column_family(db.get_column_family_handle(cf_name))
            if len(batch):
                db.write(batch, self._write_options)

    def restore_incremental(
        self,
        state: IncrementalKeyedState,
        job_dir: Path,
        start: int,
        end: int,
        local_copy: Path | None = None,
    ) -> None:
        """Add key groups ``start..end`` of an incremental checkpoint.

        When the checkpoint holds exactly this range and the DB is still empty
        (a restart at the same parallelism), its files become the DB: hard links
        (copies across filesystems), no entry is read (:meth:`open_from`).
        Otherwise (rescaling) its entries are copied as raw bytes, in batches of
        at most ``_RESTORE_BATCH_BYTES``: keys and values keep their bytes (the
        encoding and the key groups are the same: a restore never changes the
        max parallelism).

        ``local_copy``: this TaskManager's copy of the same checkpoint (local
        recovery); used instead of ``job_dir``'s files when it is complete and
        opens, else the restore falls back to them.
        """
        if self._db is None and not self._tables and not self._maps:
            key_groups = getattr(state, "key_groups", None)
            if key_groups is not None and tuple(key_groups) == (start, end):
                if local_copy is not None and self._open_local(state, local_copy):
                    logs.event(log, "state_restored", db=self.path.name, source="local")
                    return
                self.open_from(state, job_dir)
                logs.event(log, "state_restored", db=self.path.name, source="remote")
                return
        db = self._open()
        for cf_name, entries in _scan_checkpoint(state, job_dir, start, end):
            kind, _, name = cf_name.partition(":")
            if kind == "map":
                self.map_table(name)
            else:
                self.table(name)
            handle = db.get_column_family_handle(cf_name)
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.set_default_column_family(handle)
            for key, value in entries:
                batch.put(key, value)
                if batch.size_in_bytes() >= _RESTORE_BATCH_BYTES:
                    db.write(batch, self._write_options)
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    batch.set_default_column_family(handle)
            if len(batch):
                db.write(batch, self._write_options)

    def open_from(self, state: IncrementalKeyedState, job_dir: Path) -> None:
        """Make the DB the one checkpointed in ``state``: link its files, then open it.

        Its shared files stay confirmed for reuse, so the next checkpoint uploads
        only what changed since (when ``job_dir`` is this job's directory).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        for name, data in state.inline.items():
            (self.path / name).write_bytes(data)
        for name, relative in state.shared.items():
            _link_or_copy(job_dir / shared.SHARED / relative, self.path / name)
        self._open_existing(state.column_families())
        self.confirmed_files = dict(state.shared)

    def _open_local(self, state: IncrementalKeyedState, local_copy: Path) -> bool:
        """Open the DB from a local copy of ``state``'s checkpoint; False (and nothing
        changed) if the copy is missing, incomplete or does not open."""
        try:
            present = {p.name: p for p in local_copy.iterdir()}
        except OSError:
            return False
        missing = (set(state.shared) | set(state.inline)) - set(present)
        if missing:
            logs.event(
                log,
                "local_state_unusable",
                logging.WARNING,
                copy=str(local_copy),
                reason=f"missing {sorted(missing)[:3]}",
            )
            return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for name in set(state.shared) | set(state.inline):
                _link_or_copy(present[name], self.path / name)
            self._open_existing(state.column_families())
        except Exception as e:  # a corrupt copy: RocksDB refuses it on open
            logs.event(
                log,
                "local_state_unusable",
                logging.WARNING,
                copy=str(local_copy),
                reason=f"{type(e).__name__}: {e}",
            )
            self._tables.clear()
            self._maps.clear()
            if self._db is not None:
                self._db.close()
                self._db = None
            shutil.rmtree(self.path, ignore_errors=True)
            return False
        self.confirmed_files = dict(state.shared)
        return True

    def _open_existing(self, column_families: list[str]) -> None:
        options = _options(self.settings, self._cache)
        families = {cf: _options(self.settings, self._cache) for cf in column_families}
        self._db = rocksdict.Rdict(str(self.path), options, column_families=families)
        self._db.set_write_options(self._write_options)
        self._existing = set(column_families)
        for cf_name in column_families:
            kind, _, name = cf_name.partition(":")
            if kind == "map":
                self.map_table(name)
            else:
                self.table(name)

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """A full snapshot, read from the DB into the canonical form name -> {key: value}.

        States with a TTL and full-snapshot cleanup leave their expired entries out.
        """
        out: dict[str, dict[Any, Any]] = {}
        tables: list[tuple[str, RocksTable | RocksMapTable]] = [
            *self._tables.items(),
            *self._maps.items(),
        ]
        for name, table in tables:
            entry = self._ttl.get(name)
            items: Iterable[tuple[Any, Any]] = table.items()
            if entry is not None and entry[0].cleanup_full_snapshot:
                ttl_ms, now = entry[0].ttl_ms, entry[1]()
                items = (
                    (k, kept)
                    for k, v in items
                    if (kept := ttl.without_expired(v, ttl_ms, now)) is not None
                )
            entries = dict(items)
            if entries:
                out[name] = entries
        return out

    def take_checkpoint(self, checkpoint_id: int) -> LocalCheckpoint:
        """Synchronous part of an incremental checkpoint: a RocksDB checkpoint (hard links).

        Flushes the memtables (the WAL is off), so the files hold every write so far.
        """
        db = self._open()
        directory = self.path.with_name(f"{self.path.name}.chk-{checkpoint_id}")
        shutil.rmtree(directory, ignore_errors=True)  # a leftover of a declined attempt
        rocksdict.Checkpoint(db).create_checkpoint(str(directory))
        return LocalCheckpoint(
            checkpoint_id,
            directory,
            self.path.name,
            sorted(self._tables),
            dict(self.confirmed_files),
            sorted(self._maps),
            self.key_groups,
        )

    def upload(self, local: LocalCheckpoint, job_dir: storage.Location) -> IncrementalKeyedState:
        """:func:`upload`, remembering the files for reuse once the checkpoint completes.

        Runs in a worker thread; the task acknowledges (and so the checkpoint can
        complete) only after it returned.
        """
        keep = None
        if self.local_copies is not None:
            keep = self.local_copies / f"chk-{local.checkpoint_id}"
        state = upload(local, job_dir, keep)
        self.pending_files[local.checkpoint_id] = dict(state.shared)
        return state

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Later checkpoints may reuse the files of a completed (confirmed) checkpoint only.

        Files of a checkpoint that never completes may be deleted with it, so they
        are never referenced again.
        """
        files = self.pending_files.pop(checkpoint_id, None)
        if files is not None:
            self.confirmed_files = files
        for older in [c for c in self.pending_files if c < checkpoint_id]:
            del self.pending_files[older]
        if self.local_copies is not None and files is not None:
            # Local recovery keeps only the newest completed checkpoint's copy.
            for copy in self.local_copies.glob("chk-*"):
                number = copy.name.removeprefix("chk-")
                if number.isdigit() and int(number) < checkpoint_id:
                    shutil.rmtree(copy, ignore_errors=True)

    def close(self) -> None:
        """Close the DB and delete its directory."""
        if self._db is not None:
            for table in self._tables.values():
                table.close()
            for map_table in self._maps.values():
                map_table.close()
            self._tables.clear()
            self._maps.clear()
            self._db.close()
            self._db = None
        shutil.rmtree(self.path, ignore_errors=True)
        for local in self.path.parent.glob(f"{self.path.name}.chk-*"):
            shutil.rmtree(local, ignore_errors=True)  # checkpoints never uploaded


@dataclass(frozen=True)
class LocalCheckpoint:
    """A RocksDB checkpoint in the TaskManager's local directory, not yet uploaded."""

    checkpoint_id: int
    directory: Path
    db_name: str
    states: list[str]
    confirmed_files: dict[str, str]
    maps: list[str] = field(default_factory=list)
    key_groups: tuple[int, int] | None = None


@dataclass(frozen=True)
class IncrementalKeyedState:
    """The keyed state of one subtask in an incremental checkpoint (pickled in its state file).

    ``shared``: SST file name -> path under the job's ``shared/`` directory;
    ``inline``: the DB's other files (CURRENT, MANIFEST, OPTIONS, ...), small;
    ``states`` and ``maps``: the names of its value and map states.
    """

    states: list[str]
    shared: dict[str, str]
    inline: dict[str, bytes] = field(default_factory=dict)
    uploaded_bytes: int = 0
    maps: list[str] = field(default_factory=list)
    key_groups: tuple[int, int] | None = None  # the key-group range of the DB it holds

    def column_families(self) -> list[str]:
        # getattr: a state pickled before map states had their own column families.
        return [f"state:{n}" for n in self.states] + [f"map:{n}" for n in getattr(self, "maps", [])]


def upload(
    local: LocalCheckpoint, job_dir: storage.Location, keep: Path | None = None
) -> IncrementalKeyedState:
    """Asynchronous part: copy new SST files to ``<job_dir>/shared/``, inline the rest.

    ``job_dir`` is a local directory or an ``s3://`` prefix (:func:`shared.put`).
    Blocking (run it in a thread).  Written files are durable on return.  The
    local checkpoint directory is then moved to ``keep`` (local recovery) or
    deleted; deleted whatever happens if the upload fails.
    """
    uploaded_ok = False
    try:
        files: dict[str, str] = {}
        inline: dict[str, bytes] = {}
        uploaded = 0
        new: list[tuple[str, Path]] = []
        entries = sorted(os.listdir(local.directory))
        stored = shared.existing(
            job_dir, [local.confirmed_files[e] for e in entries if e in local.confirmed_files]
        )
        for entry in entries:
            source = local.directory / entry
            if not entry.endswith(".sst"):
                inline[entry] = source.read_bytes()
                continue
            reused = local.confirmed_files.get(entry)
            if reused is not None and reused in stored:
                files[entry] = reused
                continue
            name = f"{local.db_name}/{entry}"
            new.append((name, source))
            uploaded += source.stat().st_size
            files[entry] = name
        shared.put(job_dir, new)
        result = IncrementalKeyedState(
            local.states, files, inline, uploaded, local.maps, local.key_groups
        )
        uploaded_ok = True
        return result
    finally:
        if keep is not None and uploaded_ok:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(keep, ignore_errors=True)
            os.replace(local.directory, keep)
        else:
            shutil.rmtree(local.directory, ignore_errors=True)


def read_incremental(
    state: IncrementalKeyedState, job_dir: Path, start: int, end: int
) -> dict[str, dict[Any, Any]]:
    """The entries of key groups ``start..end`` of an incremental checkpoint, canonical form.

    For a restore into the ``hashmap`` backend: the result is in memory.
    """
    out: dict[str, dict[Any, Any]] = {}
    for cf_name, entries in _scan_checkpoint(state, job_dir, start, end):
        kind, _, name = cf_name.partition(":")
        if kind == "map":
            table = dict(_group_map_entries(entries))
        else:
            table = {deserialize(k[2:]): deserialize(v) for k, v in entries}
        if table:
            out[name] = table
    return out


def _scan_checkpoint(
    state: IncrementalKeyedState, job_dir: Path, start: int, end: int
) -> Iterator[tuple[str, Iterator[tuple[bytes, bytes]]]]:
    """(column family, its raw entries in key groups ``start..end``), one after the other.

    The checkpoint's files are hard-linked (copied across filesystems) into a
    temporary directory and opened read-only; each state is one range scan.
    Consume each state's entries before asking for the next state.
    """
    with tempfile.TemporaryDirectory(prefix="streamjob-restore-") as tmp:
        directory = Path(tmp)
        for name, data in state.inline.items():
            (directory / name).write_bytes(data)
        for name, relative in state.shared.items():
            _link_or_copy(job_dir / shared.SHARED / relative, directory / name)
        # Bounded options, no block cache: a sequential scan, read once.
        options = _options(_SCAN_SETTINGS)
        families = {cf: _options(_SCAN_SETTINGS) for cf in state.column_families()}
        db = rocksdict.Rdict(
            str(directory),
            options,
            column_families=families,
            access_type=rocksdict.AccessType.read_only(),
        )
        try:
            for cf_name in state.column_families():
                family = db.get_column_family(cf_name)
                try:
                    yield cf_name, _scan_raw(family, start, end)
                finally:
                    family.close()
        finally:
            db.close()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


_SCAN_SETTINGS = config.StateBackendConfig(
    config.StateBackendType.ROCKSDB, block_cache_size=0, write_buffer_size=1024 * 1024
)


def _scan_raw(family: rocksdict.Rdict, start: int, end: int) -> Iterator[tuple[bytes, bytes]]:
    stop = _GROUP.pack(end + 1) if end + 1 <= 0xFFFF else None
    for k, v in family.items(from_key=_GROUP.pack(start)):
        raw = cast(bytes, k)  # raw mode: keys and values are bytes
        if stop is not None and raw >= stop:
            return
        yield raw, cast(bytes, v)


def _scan(family: rocksdict.Rdict, start: int, end: int) -> Iterator[tuple[Any, Any]]:
    for k, v in _scan_raw(family, start, end):
        yield deserialize(k[2:]), deserialize(v)
