"""Durability: a file's fsync is followed by its directory's, where a power loss could lose it.

A real power loss cannot be simulated here; these tests record every ``os.fsync``
and check that the directory entries of new files and renames are flushed, in
order, before the step that relies on them is reported done.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from streamjob_runtime.checkpoint import metadata
from streamjob_runtime.connectors import files
from streamjob_runtime.operators import base
from streamjob_runtime.rpc import messages
from streamjob_runtime.state import storage

Synced = list[tuple[str, Path]]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> Synced:
    """Every fsync from now on, as ("dir" | "file", path), in order."""
    calls: Synced = []
    real = os.fsync

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def ctx() -> base.OperatorContext:
    return base.OperatorContext("sink", 0, 1, 128, 1, "job")


def test_sink_pre_commit_fsyncs_the_staging_directory_after_the_staged_file(
    tmp_path: Path, synced: Synced
) -> None:
    out = tmp_path / "out"
    writer = files.FileSink(str(out)).create_writer(ctx())
    staging = out / ".staging" / "sink" / "job"  # the job's own staging directory
    # The staging directories were created: their entries are flushed up to the sink's.
    assert ("dir", out) in synced
    assert ("dir", out / ".staging") in synced
    assert ("dir", out / ".staging" / "sink") in synced
    synced.clear()
    writer.write([1, 2])
    (committable,) = writer.prepare_commit(1)
    staged = out / committable.staged
    assert synced == [("file", staged), ("dir", staging)]
    synced.clear()
    writer.commit([committable])
    assert synced == [("dir", out)]  # the rename into the visible part file
    writer.close()


def test_completed_checkpoint_directory_is_fsynced_in_its_parent(
    tmp_path: Path, synced: Synced
) -> None:
    root = tmp_path / "checkpoints"
    job_dir = root / "job"
    chk = storage.checkpoint_dir(job_dir, 3)
    storage.write_unsynced(chk / "op-0.state", b"x" * 10)  # as a task writes state
    handle = messages.StateHandle("op", 0, "op-0.state", 10, 0, 127, True, False)
    meta = metadata.CheckpointMetadata(
        version=metadata.FORMAT_VERSION,
        job_id="job",
        checkpoint_id=3,
        timestamp=1,
        kind="checkpoint",
        operators={"op": metadata.OperatorState(1, 128, [handle])},
    )
    metadata.write(chk, meta)
    dirs = [path for kind, path in synced if kind == "dir"]
    # _metadata's entry in chk-3, then chk-3's in the job directory, then the job's in the root.
    assert dirs == [chk, job_dir, root]
    assert synced.index(("file", chk / "._metadata.tmp")) < synced.index(("dir", chk))


def test_task_state_files_are_fsynced_with_their_directory(tmp_path: Path, synced: Synced) -> None:
    chk = storage.checkpoint_dir(tmp_path, 1)
    paths = [chk / "a-0.state", chk / "b-0.state"]
    for p in paths:
        storage.write_unsynced(p, b"state")
    storage.fsync_files(paths)
    assert synced == [("file", paths[0]), ("file", paths[1]), ("dir", chk)]
