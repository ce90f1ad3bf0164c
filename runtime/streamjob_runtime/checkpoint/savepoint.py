"""Savepoints: self-contained, portable checkpoints in a directory the user names.

A savepoint directory holds its state files and its ``_metadata``, which names
them by relative path, so a copied or moved savepoint still restores.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.state import storage


class SavepointError(ValueError):
    """The savepoint cannot be used as asked; the message says what to do."""


def new_directory(target: str | storage.Location, job_id: str) -> storage.Location:
    """A fresh ``savepoint-<job>-<random>`` directory under ``target`` (Flink's naming)."""
    return storage.location(target) / f"savepoint-{job_id[:6]}-{secrets.token_hex(6)}"


def resolve(
    path: str | storage.Location,
) -> tuple[storage.Location, metadata.CheckpointMetadata]:
    """Read a savepoint or retained checkpoint given as its directory or its ``_metadata``."""
    try:
        p = storage.location(path)
    except storage.StorageError as e:
        raise SavepointError(str(e)) from None
    directory = p.parent if p.name == storage.METADATA else p
    if not storage.is_dir(directory):
        raise SavepointError(f"{path} does not exist: give a savepoint directory or its _metadata")
    try:
        return directory, metadata.read(directory)
    except metadata.CorruptCheckpointError as e:
        raise SavepointError(f"{path} cannot be restored: {e}") from None


def newest(
    job_dir: str | storage.Location, savepoint: str | storage.Location | None = None
) -> storage.Location:
    """The newest restore point of a job: the highest completed checkpoint in its
    checkpoint directory ``job_dir`` (``<checkpoint dir>/<job id>``; one whose
    ``_metadata`` is missing or corrupt does not count), or ``savepoint`` when it has a
    higher checkpoint id (checkpoint ids continue across savepoints and restores) or
    there is no checkpoint. Raises SavepointError when there is neither: never empty."""
    try:
        job_dir = storage.location(job_dir)
    except storage.StorageError as e:
        raise SavepointError(str(e)) from None
    found: list[tuple[int, storage.Location]] = []
    for checkpoint_id in reversed(storage.checkpoint_ids(job_dir)):
        directory = storage.checkpoint_dir(job_dir, checkpoint_id)
        try:
            found.append((metadata.read(directory).checkpoint_id, directory))
            break
        except metadata.CorruptCheckpointError:
            continue  # an incomplete checkpoint: the one before it
    problem = ""
    if savepoint is not None:
        try:
            directory, meta = resolve(savepoint)
            found.append((meta.checkpoint_id, directory))
        except SavepointError as e:
            problem = f", and {e}"
    if not found:
        raise SavepointError(
            f"{job_dir} holds no completed checkpoint{problem or ' and no savepoint was given'}:"
            " there is nothing to restore the job from"
        )
    # By id (a Path and an s3:// location do not compare).
    return max(found, key=lambda f: f[0])[1]


def check_operators(
    meta: metadata.CheckpointMetadata,
    uids: Iterable[str],
    max_parallelism: int,
    allow_non_restored_state: bool,
) -> list[str]:
    """Match the savepoint's state to the job's operators by uid.

    Returns the uids whose state will not be restored (allowed only with
    ``allow_non_restored_state``); operators new to the job start empty.
    """
    job_uids = set(uids)
    unmatched = sorted(
        uid for uid, op in meta.operators.items() if op.handles and uid not in job_uids
    )
    if unmatched and not allow_non_restored_state:
        raise SavepointError(
            f"the savepoint has state for operators the job does not have: {', '.join(unmatched)};"
            " give those operators their old uids, or pass --allow-non-restored-state to drop"
            " that state"
        )
    for uid, op in meta.operators.items():
        if uid in job_uids and op.handles and op.max_parallelism != max_parallelism:
            raise SavepointError(
                f"operator {uid!r} was saved with max parallelism {op.max_parallelism} but the"
                f" job uses {max_parallelism}; key groups cannot be remapped, so set the job's"
                f" max parallelism to {op.max_parallelism}"
            )
    return unmatched


def dispose(path: str | storage.Location) -> storage.Location:
    """Delete a savepoint, refusing any directory that is not one."""
    try:
        directory, meta = resolve(path)
    except SavepointError as e:
        raise SavepointError(
            f"refusing to dispose of {path}: it is not a savepoint ({e})"
        ) from None
    if meta.kind != "savepoint":
        raise SavepointError(
            f"{directory} is a {meta.kind}, not a savepoint; checkpoints are deleted by the job"
            " that retains them"
        )
    expected = {storage.METADATA} | {h.file for op in meta.operators.values() for h in op.handles}
    unknown = sorted(n for n in storage.names(directory) if n not in expected)
    if unknown:
        raise SavepointError(
            f"{directory} holds files that are not part of the savepoint"
            f" ({', '.join(unknown[:5])}); move them away and dispose again"
        )
    storage.delete_tree(directory)
    return directory
