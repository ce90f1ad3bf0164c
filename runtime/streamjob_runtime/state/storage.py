"""Checkpoint storage: a filesystem path (a PVC in Kubernetes) or an S3 bucket.

Layout::

    <root>/<job_id>/chk-<id>/<uid>-<subtask>.state   state files, written by tasks
    <root>/<job_id>/chk-<id>/_metadata               written last, atomically, by the JobManager

A checkpoint directory without a valid ``_metadata`` is incomplete and is
never used for a restore.

Every function here takes a :data:`Location`, chosen by :func:`location` from
the URL scheme: a plain path or ``file://`` gives a :class:`~pathlib.Path` (the
local code below, with its fsyncs), ``s3://bucket/prefix`` an
:class:`~streamjob_runtime.state.objectstore.ObjectPath` handled by
:mod:`~streamjob_runtime.state.objectstore`.  Callers never branch on the kind.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

from streamjob_runtime import config
from streamjob_runtime.state import objectstore

METADATA = "_metadata"

Location = Path | objectstore.ObjectPath


class StorageError(ValueError):
    """A storage location cannot be used; the message says what to fix."""


def location(value: str | Location, s3: config.S3Config | None = None) -> Location:
    """Parse a user-given path or URL: a local path, ``file://...`` or ``s3://bucket/...``.

    ``s3`` is the job's ``s3.*`` options: an ``s3://`` location is reached with them
    (also one given already parsed, unless ``s3`` is None).
    """
    if isinstance(value, objectstore.ObjectPath):
        return value if s3 is None else value.with_options(s3)
    if not isinstance(value, str):
        return value
    if value.startswith("file://"):
        return Path(value[len("file://") :])
    if "://" in value:
        try:
            parsed = objectstore.ObjectPath.parse(value, s3)
        except ValueError as e:
            raise StorageError(str(e)) from None
        objectstore.prepare(s3)  # this process will talk to S3: load the client now
        return parsed
    return Path(value)


def is_remote(path: Location) -> bool:
    """True for object storage (no fsync, no rename: uploads are durable when they return)."""
    return isinstance(path, objectstore.ObjectPath)


@overload
def checkpoint_dir(job_dir: Path, checkpoint_id: int) -> Path: ...
@overload
def checkpoint_dir(
    job_dir: objectstore.ObjectPath, checkpoint_id: int
) -> objectstore.ObjectPath: ...
@overload
def checkpoint_dir(job_dir: str | Location, checkpoint_id: int) -> Location: ...
def checkpoint_dir(job_dir: str | Location, checkpoint_id: int) -> Location:
    return location(job_dir) / f"chk-{checkpoint_id}"


def makedirs(path: Location) -> None:
    """Create a directory (object stores have none: nothing to do)."""
    if isinstance(path, objectstore.ObjectPath):
        return
    path.mkdir(parents=True, exist_ok=True)


def read_bytes(path: Location) -> bytes:
    """The whole file; raises FileNotFoundError when it does not exist."""
    if isinstance(path, objectstore.ObjectPath):
        return objectstore.read_bytes(path)
    return path.read_bytes()


def size(path: Location) -> int:
    """The file's size in bytes; raises FileNotFoundError when it does not exist."""
    if isinstance(path, objectstore.ObjectPath):
        return objectstore.size(path)
    return path.stat().st_size


def is_dir(path: Location) -> bool:
    """Whether the directory exists (on object storage: whether any object is under it)."""
    if isinstance(path, objectstore.ObjectPath):
        return bool(objectstore.names(path))
    return path.is_dir()


def names(directory: Location) -> list[str]:
    """Names of the entries directly under ``directory`` (files and subdirectories)."""
    if isinstance(directory, objectstore.ObjectPath):
        return objectstore.names(directory)
    return [e.name for e in directory.iterdir()]


def delete_tree(path: Location) -> None:
    """Delete a directory and all under it (an object prefix, and the multipart uploads in
    progress under it); errors propagate."""
    if isinstance(path, objectstore.ObjectPath):
        objectstore.delete_prefix(path)
        return
    shutil.rmtree(path)


def write_file(path: Location, data: bytes) -> int:
    """Write ``data`` durably (fsync) and return its size."""
    if isinstance(path, objectstore.ObjectPath):
        return objectstore.put(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data)


def write_unsynced(path: Location, data: bytes) -> int:
    """Write ``data`` to the page cache only; :func:`fsync_files` makes it durable.

    On object storage this is a blocking upload: call it off the event loop.
    """
    if isinstance(path, objectstore.ObjectPath):
        return objectstore.put(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def fsync_directory(directory: Location) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed in it) durable.

    A file's own fsync does not persist its name: after a power loss a new file
    (or a rename) whose directory was not fsynced can be gone, data and all.
    Object storage has no directories (an object is durable once its PUT
    returned): there this does nothing.
    """
    if isinstance(directory, objectstore.ObjectPath):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(paths: Sequence[Location]) -> None:
    """Flush written files and their directories to disk (blocking: run it off the loop)."""
    directories = set()
    for path in paths:
        if isinstance(path, objectstore.ObjectPath):
            continue  # an uploaded object is durable once the PUT returned
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directories.add(path.parent)
    for directory in directories:
        fsync_directory(directory)


def write_atomically(path: Location, data: bytes) -> None:
    """Write-then-rename: readers see the old file, nothing, or all of ``data``.

    On object storage a single PUT is atomic already; it is conditional
    (``If-None-Match: *``), so of two writers of the same object only one
    succeeds and the other gets :class:`FileExistsError`.
    """
    if isinstance(path, objectstore.ObjectPath):
        objectstore.put(path, data, exclusive=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def checkpoint_ids(job_dir: str | Location) -> list[int]:
    """Ids of the checkpoint directories under ``job_dir``, ascending (complete or not)."""
    root = location(job_dir)
    if isinstance(root, objectstore.ObjectPath):
        found = objectstore.names(root)
        return sorted(int(n[4:]) for n in found if n.startswith("chk-") and n[4:].isdigit())
    if not root.is_dir():
        return []
    ids = []
    for entry in root.iterdir():
        if entry.name.startswith("chk-") and entry.name[4:].isdigit():
            ids.append(int(entry.name[4:]))
    return sorted(ids)


def abort_uploads(directory: Location, abandoned: Callable[[str], bool] | None = None) -> list[str]:
    """Abort the multipart uploads in progress under ``directory`` on object storage (those
    whose key relative to ``directory`` makes ``abandoned`` true, when given); returns the
    aborted keys relative to ``directory``.  Local storage has no uploads: nothing to do."""
    if not isinstance(directory, objectstore.ObjectPath):
        return []
    prefix = f"{directory.key}/" if directory.key else ""

    def relative(path: objectstore.ObjectPath) -> str:
        return path.key.removeprefix(prefix)

    aborted = objectstore.abort_uploads(
        directory, None if abandoned is None else lambda p: abandoned(relative(p))
    )
    return [relative(p) for p in aborted]


def discard_later(path: Location) -> None:
    """:func:`discard` without blocking the caller when ``path`` is on object storage.

    Deleting objects is network I/O that can take seconds on a slow store: it must
    never hold up the JobManager's event loop.  Local deletes stay synchronous.
    """
    if isinstance(path, objectstore.ObjectPath):
        threading.Thread(target=discard, args=(path,), name="discard", daemon=True).start()
        return
    discard(path)


def discard(path: Location) -> None:
    """Delete a directory and all under it, best effort (errors are ignored)."""
    if isinstance(path, objectstore.ObjectPath):
        objectstore.delete_prefix(path, ignore_errors=True)
        return
    shutil.rmtree(path, ignore_errors=True)
