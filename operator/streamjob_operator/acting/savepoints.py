"""Disposing of expired savepoints, when the operator can see them.

The JobManager's REST API has no dispose call (``streamjob savepoint --dispose PATH``
deletes the directory where the CLI runs), and savepoints live on a volume the
JobManagers and TaskManagers mount, which the operator's pod does not mount unless it
is told to. So: the operator is given the directories it mounts at the same paths as
the jobs (``--savepoint-volume``, e.g. the same ReadWriteMany PVC); a savepoint under
one of them is deleted here, one elsewhere (another volume) is not. Likewise on S3: the
operator is given the ``s3://bucket[/prefix]`` roots it may delete under
(``--savepoint-bucket``) and reads its credentials from its own pod's environment
(botocore's usual sources: AWS_* variables, profiles, web identity for IRSA,
AWS_ENDPOINT_URL for S3-compatible stores), as the jobs do. Opt-in and scoped because
one operator serves many jobs: it deletes only where it was told it may.

- under a mounted directory or root, a savepoint (it holds ``_metadata``) is deleted:
  DISPOSED; a location that does not exist is GONE (disposed before, or by hand);
- under a mounted directory or root, something that is not a savepoint is REFUSED;
- anywhere else it is NOT_MOUNTED.

On S3 a savepoint is the objects under ``<key>/`` (never a sibling such as
``<key>1/``); its ``_metadata`` is deleted last, so that a disposal cut short is
finished by the next attempt instead of being refused as "not a savepoint".

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
from typing import Any
from urllib.parse import urlparse

from streamjob_operator.planning import actions

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


def object_key(location: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of an ``s3://bucket/key`` location (key without ``/`` at either
    end, ``_metadata`` dropped); None for other schemes and for keys with empty, ``.``
    or ``..`` segments (which S3 would take literally, but a person reading them would not)."""
    parsed = urlparse(location)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        return None
    segments = parsed.path.strip("/").split("/") if parsed.path.strip("/") else []
    if segments and segments[-1] == METADATA:
        segments.pop()
    if any(s in ("", ".", "..") for s in segments):
        return None
    return parsed.netloc, "/".join(segments)


def _under_root(location: tuple[str, str], roots: Sequence[str]) -> bool:
    bucket, key = location
    for root in roots:
        parsed = object_key(root)
        if parsed is None or parsed[0] != bucket or not key:
            continue
        prefix = parsed[1]
        if not prefix or key.startswith(prefix + "/"):
            return True
    return False


def _filesystem(store: actions.ObjectStore) -> Any:
    """An s3fs filesystem for ``store``, with this process's credentials; what ``store``
    leaves out comes from the environment (AWS_ENDPOINT_URL, AWS_REGION...), as in the
    jobs' processes."""
    import s3fs  # imported on first use: operators without S3 roots never load botocore

    kwargs: dict[str, Any] = {}
    if store.endpoint:
        kwargs["endpoint_url"] = store.endpoint
    if store.region:
        kwargs["client_kwargs"] = {"region_name": store.region}
    if store.path_style_access is not None:
        style = "path" if store.path_style_access else "virtual"
        kwargs["config_kwargs"] = {"s3": {"addressing_style": style}}
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True, **kwargs)


def _dispose_object(fs: Any, bucket: str, key: str) -> Disposal:
    base = f"{bucket}/{key}"
    try:
        found = [str(k) for k in fs.find(base + "/")]
    except Exception as e:  # botocore's and s3fs's errors are not all OSErrors
        raise OSError(f"listing s3://{base}/ failed: {type(e).__name__}: {e}") from e
    found = [k for k in found if k.startswith(base + "/")]
    if not found:
        return Disposal.GONE
    metadata = f"{base}/{METADATA}"
    if metadata not in found:
        return Disposal.REFUSED
    try:
        rest = [k for k in found if k != metadata]
        if rest:
            fs.rm(rest)
        fs.rm(metadata)
    except Exception as e:
        raise OSError(f"deleting s3://{base}/ failed: {type(e).__name__}: {e}") from e
    return Disposal.DISPOSED


def dispose(
    location: str,
    mounts: Sequence[Path],
    roots: Sequence[str] = (),
    store: actions.ObjectStore | None = None,
) -> Disposal:
    """Delete the savepoint at ``location`` if the operator mounts it or may delete under
    its S3 root, an ``s3://`` one in ``store`` (blocking I/O; OSError when the store
    fails, to be retried)."""
    key = object_key(location)
    if key is not None:
        if not _under_root(key, roots):
            return Disposal.NOT_MOUNTED
        return _dispose_object(_filesystem(store or actions.ObjectStore()), *key)
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
            f"the expired savepoint {location} was not disposed of: it is not under an S3"
            " root the operator may delete under (give it with --savepoint-bucket, and the"
            " operator credentials); it was dropped from the history, delete it with"
            f" `streamjob savepoint --dispose {location}`"
        )
    return (
        f"the expired savepoint {location} was not disposed of: the operator does not mount"
        " it (give the operator the savepoint volume with --savepoint-volume); it was dropped"
        " from the history, delete it by hand"
    )
