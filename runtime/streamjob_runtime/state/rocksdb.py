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

Not done: timers kept in RocksDB (the timer queue is rebuilt on the heap),
state TTL, local recovery, and restoring a full (canonical) snapshot without
reading it into memory (it is one pickle).
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import rocksdict

from streamjob_runtime.state import shared, storage

_INT = struct.Struct(">q")
_FLOAT = struct.Struct(">d")
_GROUP = struct.Struct(">H")
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1

_NO_DEFAULT: Any = object()
_RESTORE_BATCH = 10_000
_TAG_PICKLE = 0
_TAG_INT = 1
_TAG_FLOAT = 2
_TAG_STR = 3


def serialize(value: Any) -> bytes:
    """Tagged bytes of ``value``; equal plain values (int, float, str) give equal bytes."""
    t = type(value)
    if t is int and _MIN_INT <= value <= _MAX_INT:
        return b"\x01" + _INT.pack(value)
    if t is str:
        text: str = value
        return b"\x03" + text.encode("utf-8", "surrogatepass")
    if t is float:
        return b"\x02" + _FLOAT.pack(value)
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
    return pickle.loads(data[1:])


def _options() -> rocksdict.Options:
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
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


class RocksDBKeyedStateBackend:
    """Keyed state of one operator subtask in its own RocksDB.

    ``key_group_of`` maps a record key to its key group (the operator passes
    :func:`streamjob_runtime.graph.keygroups.key_group` bound to its max
    parallelism).  The DB is opened on first use, so an operator that never
    touches keyed state creates no files.
    """

    def __init__(self, local_dir: str | Path, name: str, key_group_of: Callable[[Any], int]):
        self.path = Path(local_dir) / "streamjob-rocksdb" / f"{name}-{uuid.uuid4().hex[:8]}"
        self.current_key: Any = None
        self._key_group_of = key_group_of
        self._db: rocksdict.Rdict | None = None
        self._tables: dict[str, RocksTable] = {}
        self._write_options = rocksdict.WriteOptions()
        # An attribute at run time, though rocksdict's stub declares a method.
        self._write_options.disable_wal = True  # type: ignore[method-assign,assignment]
        self._last_key: Any = object()
        self._last_encoded = b""
        # Incremental checkpoints: SST name -> shared path, of the last confirmed checkpoint,
        # and of each checkpoint uploaded but not yet confirmed.
        self.confirmed_files: dict[str, str] = {}
        self.pending_files: dict[int, dict[str, str]] = {}

    def _open(self) -> rocksdict.Rdict:
        if self._db is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = rocksdict.Rdict(str(self.path), _options())
            self._db.set_write_options(self._write_options)
        return self._db

    def encode_key(self, key: Any) -> bytes:
        """Key group, big-endian, then the serialised key (the last key is cached)."""
        if key is self._last_key:
            return self._last_encoded
        encoded = _GROUP.pack(self._key_group_of(key)) + serialize(key)
        self._last_key, self._last_encoded = key, encoded
        return encoded

    def table(self, name: str) -> RocksTable:
        table = self._tables.get(name)
        if table is None:
            db = self._open()
            # Prefixed: a state may be called "default", RocksDB's own column family.
            family = db.create_column_family(f"state:{name}", _options())
            family.set_write_options(self._write_options)
            table = self._tables[name] = RocksTable(self, family)
        return table

    def restore(self, tables: dict[str, dict[Any, Any]]) -> None:
        for name, entries in tables.items():
            self.table(name)
            db = self._open()
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.set_default_column_family(db.get_column_family_handle(f"state:{name}"))
            for key, value in entries.items():
                batch.put(self.encode_key(key), serialize(value))
            db.write(batch, self._write_options)

    def restore_incremental(
        self, state: IncrementalKeyedState, job_dir: Path, start: int, end: int
    ) -> None:
        """Add key groups ``start..end`` of an incremental checkpoint: raw entries, in batches.

        Keys and values keep their bytes (the encoding and the key groups are the
        same: a restore never changes the max parallelism), and at most
        ``_RESTORE_BATCH`` entries are in memory at once.
        """
        db = self._open()
        for name, entries in _scan_checkpoint(state, job_dir, start, end):
            self.table(name)
            handle = db.get_column_family_handle(f"state:{name}")
            batch = rocksdict.WriteBatch(raw_mode=True)
            batch.set_default_column_family(handle)
            for key, value in entries:
                batch.put(key, value)
                if len(batch) >= _RESTORE_BATCH:
                    db.write(batch, self._write_options)
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    batch.set_default_column_family(handle)
            if len(batch):
                db.write(batch, self._write_options)

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """A full snapshot, read from the DB into the canonical form name -> {key: value}."""
        out: dict[str, dict[Any, Any]] = {}
        for name, table in self._tables.items():
            entries = dict(table.items())
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
        )

    def upload(self, local: LocalCheckpoint, job_dir: storage.Location) -> IncrementalKeyedState:
        """:func:`upload`, remembering the files for reuse once the checkpoint completes.

        Runs in a worker thread; the task acknowledges (and so the checkpoint can
        complete) only after it returned.
        """
        state = upload(local, job_dir)
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

    def close(self) -> None:
        """Close the DB and delete its directory."""
        if self._db is not None:
            for table in self._tables.values():
                table.close()
            self._tables.clear()
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


@dataclass(frozen=True)
class IncrementalKeyedState:
    """The keyed state of one subtask in an incremental checkpoint (pickled in its state file).

    ``shared``: SST file name -> path under the job's ``shared/`` directory;
    ``inline``: the DB's other files (CURRENT, MANIFEST, OPTIONS, ...), small.
    """

    states: list[str]
    shared: dict[str, str]
    inline: dict[str, bytes] = field(default_factory=dict)
    uploaded_bytes: int = 0


def upload(local: LocalCheckpoint, job_dir: storage.Location) -> IncrementalKeyedState:
    """Asynchronous part: copy new SST files to ``<job_dir>/shared/``, inline the rest.

    ``job_dir`` is a local directory or an ``s3://`` prefix (:func:`shared.put`).
    Blocking (run it in a thread).  Written files are durable on return.  The
    local checkpoint directory is deleted afterwards, whatever happens.
    """
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
        return IncrementalKeyedState(local.states, files, inline, uploaded)
    finally:
        shutil.rmtree(local.directory, ignore_errors=True)


def read_incremental(
    state: IncrementalKeyedState, job_dir: Path, start: int, end: int
) -> dict[str, dict[Any, Any]]:
    """The entries of key groups ``start..end`` of an incremental checkpoint, canonical form.

    For a restore into the ``hashmap`` backend: the result is in memory.
    """
    out: dict[str, dict[Any, Any]] = {}
    for name, entries in _scan_checkpoint(state, job_dir, start, end):
        table = {deserialize(k[2:]): deserialize(v) for k, v in entries}
        if table:
            out[name] = table
    return out


def _scan_checkpoint(
    state: IncrementalKeyedState, job_dir: Path, start: int, end: int
) -> Iterator[tuple[str, Iterator[tuple[bytes, bytes]]]]:
    """(state name, its raw entries in key groups ``start..end``), one state after the other.

    The checkpoint's files are hard-linked (copied across filesystems) into a
    temporary directory and opened read-only; each state is one range scan.
    Consume each state's entries before asking for the next state.
    """
    with tempfile.TemporaryDirectory(prefix="streamjob-restore-") as tmp:
        directory = Path(tmp)
        for name, data in state.inline.items():
            (directory / name).write_bytes(data)
        for name, relative in state.shared.items():
            source = job_dir / shared.SHARED / relative
            try:
                os.link(source, directory / name)
            except OSError:
                shutil.copyfile(source, directory / name)
        db = rocksdict.Rdict(
            str(directory), _options(), access_type=rocksdict.AccessType.read_only()
        )
        try:
            for name in state.states:
                family = db.get_column_family(f"state:{name}")
                try:
                    yield name, _scan_raw(family, start, end)
                finally:
                    family.close()
        finally:
            db.close()


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
