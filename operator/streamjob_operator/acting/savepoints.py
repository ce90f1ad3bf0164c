"""Disposing of expired savepoints, when the operator can see them.

The JobManager's REST API has no dispose call (``streamjob savepoint --dispose PATH``
deletes the directory where the CLI runs), and savepoints live on a volume the
JobManagers and TaskManagers mount, which the operator's pod does not mount unless it
is told to. So: the operator is given the directories it mounts at the same paths as
the jobs (``--savepoint-volume``, e.g. the same ReadWriteMany PVC); a savepoint under
one of them is deleted here, one elsewhere (another volume, object storage) is not.

- under a mounted directory, a savepoint directory (it holds ``_metadata``) is deleted:
  DISPOSED; a location that does not exist is GONE (disposed before, or by hand);
- under a mounted directory, something that is not a savepoint is REFUSED;
- anywhere else it is NOT_MOUNTED.

Only DISPOSED and GONE free the storage. Acting reports the other two as a Warning
Event naming the path (so that a person deletes it, or mounts the volume), and still
tells planning the location is done with, so that it leaves the history instead of
being asked for every pass: the operator keeps no record of savepoints it could not
delete beyond that Event.
"""

from __future__ import annotations

import enum
import shutil
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

METADATA = "_metadata"  # the runtime's name for a savepoint's metadata file


class Disposal(enum.StrEnum):
    DISPOSED = "disposed"
    GONE = "gone"
    REFUSED = "refused"
    NOT_MOUNTED = "not-mounted"

    @property
    def freed(self) -> bool:
        return self in (Disposal.DISPOSED, Disposal.GONE)


def local_path(location: str) -> Path | None:
    """The filesystem path of a location (a path or a file:// URL); None for other schemes."""
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else location)
        return path if path.is_absolute() else None
    return None


def _under(path: Path, mounts: Sequence[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(m.resolve()) and resolved != m.resolve() for m in mounts)


def dispose(location: str, mounts: Sequence[Path]) -> Disposal:
    """Delete the savepoint at ``location`` if the operator mounts it (blocking I/O)."""
    path = local_path(location)
    if path is None or not _under(path, mounts):
        return Disposal.NOT_MOUNTED
    if path.name == METADATA:
        path = path.parent
    if not path.exists():
        return Disposal.GONE
    if not path.is_dir() or not (path / METADATA).is_file():
        return Disposal.REFUSED
    shutil.rmtree(path)
    return Disposal.DISPOSED


def explain(location: str, result: Disposal) -> str:
    if result is Disposal.REFUSED:
        return (
            f"the expired savepoint {location} was not disposed of: it is not a savepoint"
            f" directory (no {METADATA}); it was dropped from the history, delete it by hand"
        )
    if urlparse(location).scheme == "s3":
        return (
            f"the expired savepoint {location} was not disposed of: the operator does not"
            " dispose of savepoints on S3 yet; it was dropped from the history, delete it"
            f" with `streamjob savepoint --dispose {location}`"
        )
    return (
        f"the expired savepoint {location} was not disposed of: the operator does not mount"
        " it (give the operator the savepoint volume with --savepoint-volume); it was dropped"
        " from the history, delete it by hand"
    )
