"""Checkpoint storage on a filesystem path (a PVC in Kubernetes).

Layout::

    <root>/<job_id>/chk-<id>/<uid>-<subtask>.state   state files, written by tasks
    <root>/<job_id>/chk-<id>/_metadata               written last, atomically, by the JobManager

A checkpoint directory without a valid ``_metadata`` is incomplete and is
never used for a restore.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

METADATA = "_metadata"


def checkpoint_dir(job_dir: str | Path, checkpoint_id: int) -> Path:
    return Path(job_dir) / f"chk-{checkpoint_id}"


def write_file(path: Path, data: bytes) -> int:
    """Write ``data`` durably (fsync) and return its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data)


def write_unsynced(path: Path, data: bytes) -> int:
    """Write ``data`` to the page cache only; :func:`fsync_files` makes it durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (files created, renamed or removed in it) durable.

    A file's own fsync does not persist its name: after a power loss a new file
    (or a rename) whose directory was not fsynced can be gone, data and all.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(paths: list[Path]) -> None:
    """Flush written files and their directories to disk (blocking: run it off the loop)."""
    directories = set()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directories.add(path.parent)
    for directory in directories:
        fsync_directory(directory)


def write_atomically(path: Path, data: bytes) -> None:
    """Write-then-rename: readers see the old file, nothing, or all of ``data``."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def checkpoint_ids(job_dir: str | Path) -> list[int]:
    """Ids of the checkpoint directories under ``job_dir``, ascending (complete or not)."""
    root = Path(job_dir)
    if not root.is_dir():
        return []
    ids = []
    for entry in root.iterdir():
        if entry.name.startswith("chk-") and entry.name[4:].isdigit():
            ids.append(int(entry.name[4:]))
    return sorted(ids)


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
