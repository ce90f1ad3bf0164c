"""Shared state files of incremental checkpoints, and when to delete them.

Incremental checkpoints (RocksDB) upload each SST file once, to
``<job dir>/shared/``, and later checkpoints reference it again.  Each state
file that references shared files has a sidecar ``<uid>-<subtask>.shared`` in
its checkpoint directory listing them (one path, relative to ``shared/``, per
line).  A shared file is deleted when the last retained checkpoint that
references it is discarded: reference counting, recomputed from the sidecars
of the retained checkpoints each time, so it needs no state of its own and
survives a JobManager failover.

Why discarding the files of an older checkpoint never breaks one in flight: a
task reuses only files of a checkpoint that completed (was confirmed), and an
SST file lives in a DB over one interval of time, so a file referenced by an
older checkpoint and by one in flight is also referenced by every completed
checkpoint between them, the retained ones included.

Not done: files uploaded by a checkpoint that never wrote its sidecar (the
task died mid-upload) are never referenced and never deleted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

SHARED = "shared"
SUFFIX = ".shared"


def references(checkpoint_dir: Path) -> set[str]:
    """The shared files that checkpoint directory ``checkpoint_dir`` references."""
    refs: set[str] = set()
    if not checkpoint_dir.is_dir():
        return refs
    for entry in checkpoint_dir.iterdir():
        if entry.name.endswith(SUFFIX):
            refs.update(line for line in entry.read_text().splitlines() if line)
    return refs


def unreferenced(discarded: Iterable[set[str]], retained: Iterable[set[str]]) -> set[str]:
    """Files referenced by discarded checkpoints and by no retained one (pure)."""
    gone: set[str] = set().union(*discarded)
    return gone - set().union(*retained)


def delete(job_dir: Path, files: Iterable[str]) -> None:
    """Delete shared files (missing ones are fine: a retry after a crash)."""
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
