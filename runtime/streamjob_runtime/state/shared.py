"""Shared state files of incremental checkpoints, and when to delete them.

Incremental checkpoints (RocksDB) upload each SST file once, to
``<job dir>/shared/``, and later checkpoints reference it again.  Each state
file that references shared files has a sidecar ``<uid>-<subtask>.shared`` in
its checkpoint directory listing them (one path, relative to ``shared/``, per
line).  A shared file is deleted when the last retained checkpoint that
references it is discarded: reference counting, recomputed from the sidecars
of the retained checkpoints each time, so it needs no state of its own and
survives a JobManager failover.

The job directory is a local path or an ``s3://`` prefix (:mod:`storage`): on
object storage a shared file is one object (a multipart upload of parallel
parts when large, :func:`put`), new files of one checkpoint go up in parallel,
and a restore downloads the files it needs (:func:`fetch`) before reading them.

Why discarding the files of an older checkpoint never breaks one in flight: a
task reuses only files of a checkpoint that completed (was confirmed), and an
SST file lives in a DB over one interval of time, so a file referenced by an
older checkpoint and by one in flight is also referenced by every completed
checkpoint between them, the retained ones included.

Not done: files uploaded by a checkpoint that never wrote its sidecar (the
task died mid-upload) are never referenced and never deleted (on object
storage an upload cut off midway is aborted, see ``checkpoint/store.py``; a
file uploaded whole stays).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from pathlib import Path
from typing import TypeVar

from streamjob_runtime.state import objectstore, storage

_T = TypeVar("_T")

SHARED = "shared"
SUFFIX = ".shared"
UPLOAD_THREADS = 4  # parallel uploads and downloads of shared files on object storage


def references(checkpoint_dir: storage.Location) -> set[str]:
    """The shared files that checkpoint directory ``checkpoint_dir`` references."""
    refs: set[str] = set()
    try:
        names = storage.names(checkpoint_dir)
    except FileNotFoundError:
        return refs
    for name in names:
        if name.endswith(SUFFIX):
            text = storage.read_bytes(checkpoint_dir / name).decode()
            refs.update(line for line in text.splitlines() if line)
    return refs


def unreferenced(discarded: Iterable[set[str]], retained: Iterable[set[str]]) -> set[str]:
    """Files referenced by discarded checkpoints and by no retained one (pure)."""
    gone: set[str] = set().union(*discarded)
    return gone - set().union(*retained)


def inside(name: str) -> bool:
    """Whether ``name`` stays inside ``shared/`` (whatever a sidecar says)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def existing(job_dir: storage.Location, names: Iterable[str]) -> set[str]:
    """Which of the shared files ``names`` (relative to ``shared/``) are stored.

    On object storage one listing per directory of ``names`` (a DB's), not a
    request per file.
    """
    wanted = set(names)
    if isinstance(job_dir, objectstore.ObjectPath):
        found: set[str] = set()
        for directory in {posixpath.dirname(n) for n in wanted}:
            root = job_dir / SHARED
            listed = objectstore.names(root / directory if directory else root)
            found.update(posixpath.join(directory, n) for n in listed)
        return wanted & found
    return {n for n in wanted if (job_dir / SHARED / n).is_file()}


def put(job_dir: storage.Location, files: Sequence[tuple[str, Path]]) -> None:
    """Store local files as shared files: ``(name relative to shared/, source)`` pairs.

    Durable on return (local: copied, fsynced, renamed into place, directories
    fsynced; object storage: uploaded, in parallel).  Blocking: run it in a thread.
    """

    def copy(tmp: Path, source: Path) -> None:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    _store(job_dir, files, objectstore.upload_file, copy)


def put_data(job_dir: storage.Location, files: Sequence[tuple[str, bytes]]) -> None:
    """Store bytes as shared files: ``(name relative to shared/, data)`` pairs.

    Durable on return, as :func:`put`.  Blocking: run it in a thread.
    """

    def write(tmp: Path, data: bytes) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _store(job_dir, files, objectstore.put, write)


def _store(
    job_dir: storage.Location,
    files: Sequence[tuple[str, _T]],
    upload: Callable[[objectstore.ObjectPath, _T], object],
    write: Callable[[Path, _T], None],
) -> None:
    """``put``/``put_data``: each item uploaded in parallel to object storage, or locally
    ``write``-n to a temporary file that is renamed into place, with the directories
    (``shared/`` included) fsynced after."""
    if not files:
        return
    if isinstance(job_dir, objectstore.ObjectPath):
        root = job_dir / SHARED
        with futures.ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="shared-up") as pool:
            for done in [pool.submit(upload, root / n, item) for n, item in files]:
                done.result()
        return
    directories = set()
    for name, item in files:
        target = job_dir / SHARED / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # A temporary name of its own: two checkpoints in flight (one, then the final
        # one at the end of input) may both store a new SST file that no completed
        # checkpoint has yet, and with one name the second rename found nothing (or a
        # write truncated the other's).  The bytes are the same (an SST file's name is
        # unique in its DB), so whichever rename lands last is right.
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        write(tmp, item)
        os.replace(tmp, target)
        directories.add(target.parent)
    for directory in directories:
        storage.fsync_directory(directory)
    storage.fsync_directory(job_dir / SHARED)


def fetch(job_dir: storage.Location, names: Iterable[str], target: Path) -> None:
    """Download shared files to ``target/shared/<name>`` (for a restore from object
    storage, which then reads ``target`` as the job directory).  Blocking, parallel."""
    if not isinstance(job_dir, objectstore.ObjectPath):
        raise TypeError(f"{job_dir} is a local directory: read its shared files in place")
    root = job_dir / SHARED
    wanted = sorted(set(names))
    for name in wanted:
        if not inside(name):
            raise ValueError(f"shared file {name!r} is outside {root}: the checkpoint is corrupt")
        (target / SHARED / name).parent.mkdir(parents=True, exist_ok=True)
    with futures.ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="shared-down") as pool:
        for done in [
            pool.submit(objectstore.download_file, root / name, target / SHARED / name)
            for name in wanted
        ]:
            done.result()


def delete(job_dir: storage.Location, files: Iterable[str]) -> None:
    """Delete shared files (missing ones are fine: a retry after a crash)."""
    if isinstance(job_dir, objectstore.ObjectPath):
        objects = job_dir / SHARED
        objectstore.delete_objects([objects / name for name in files if inside(name)])
        return
    root = job_dir / SHARED
    parents: set[Path] = set()
    for name in files:
        path = root / name
        if not path.resolve().is_relative_to(root.resolve()):
            continue  # never outside shared/, whatever a sidecar says
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        parents.add(path.parent)
    for parent in parents:
        if parent != root:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only once empty: the DB of an ended attempt
