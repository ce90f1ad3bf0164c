from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from streamjob_runtime.checkpoint import metadata, savepoint
from streamjob_runtime.rpc import messages


def sample(directory: Path) -> metadata.CheckpointMetadata:
    (directory / "op-0.state").write_bytes(b"x" * 10)
    handle = messages.StateHandle("op", 0, "op-0.state", 10, 0, 127, True, False)
    return metadata.CheckpointMetadata(
        version=metadata.FORMAT_VERSION,
        job_id="j",
        checkpoint_id=3,
        timestamp=1,
        kind="checkpoint",
        operators={"op": metadata.OperatorState(1, 128, [handle])},
    )


def test_metadata_round_trips(tmp_path: Path) -> None:
    meta = sample(tmp_path)
    metadata.write(tmp_path, meta)
    assert metadata.read(tmp_path) == meta
    assert meta.state_size() == 10
    assert not list(tmp_path.glob(".*tmp")), "the temporary file was left behind"


def test_missing_metadata_means_the_checkpoint_never_completed(tmp_path: Path) -> None:
    with pytest.raises(metadata.CorruptCheckpointError, match="missing"):
        metadata.read(tmp_path)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path: Path) -> None:
    metadata.write(tmp_path, sample(tmp_path))
    path = tmp_path / "_metadata"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"checkpoint_id":3', b'"checkpoint_id":4'))
    with pytest.raises(metadata.CorruptCheckpointError, match="checksum"):
        metadata.read(tmp_path)


def test_truncated_metadata_is_corrupt(tmp_path: Path) -> None:
    metadata.write(tmp_path, sample(tmp_path))
    path = tmp_path / "_metadata"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(metadata.CorruptCheckpointError, match="not valid"):
        metadata.read(tmp_path)


def test_missing_or_truncated_state_file_makes_the_checkpoint_unusable(tmp_path: Path) -> None:
    metadata.write(tmp_path, sample(tmp_path))
    (tmp_path / "op-0.state").write_bytes(b"x")
    with pytest.raises(metadata.CorruptCheckpointError, match="has 1 bytes"):
        metadata.read(tmp_path)
    (tmp_path / "op-0.state").unlink()
    with pytest.raises(metadata.CorruptCheckpointError, match="is missing"):
        metadata.read(tmp_path)


def test_unknown_format_version_names_both_versions(tmp_path: Path) -> None:
    meta = msgspec.structs.replace(sample(tmp_path), version=99)
    metadata.write(tmp_path, meta)
    with pytest.raises(metadata.CorruptCheckpointError, match=r"format version 99.*version 1"):
        metadata.read(tmp_path)


def completed(directory: Path, checkpoint_id: int, kind: str = "checkpoint") -> Path:
    directory.mkdir(parents=True)
    meta = msgspec.structs.replace(sample(directory), checkpoint_id=checkpoint_id, kind=kind)
    metadata.write(directory, meta)
    return directory


def test_the_newest_restore_point_is_the_highest_completed_checkpoint(tmp_path: Path) -> None:
    job = tmp_path / "job"
    completed(job / "chk-7", 7)
    completed(job / "chk-9", 9)
    (job / "chk-10").mkdir()  # in flight when the JobManager died: no _metadata
    older = completed(tmp_path / "savepoint-a", 5, "savepoint")
    assert savepoint.newest(job) == job / "chk-9"
    assert savepoint.newest(job, older) == job / "chk-9"
    newer = completed(tmp_path / "savepoint-b", 12, "savepoint")
    assert savepoint.newest(job, newer) == newer
    assert savepoint.newest(tmp_path / "no-checkpoints", newer / "_metadata") == newer


def test_no_checkpoint_and_no_savepoint_is_refused_never_empty(tmp_path: Path) -> None:
    (tmp_path / "job" / "chk-1").mkdir(parents=True)
    with pytest.raises(savepoint.SavepointError, match=r"no completed checkpoint.*nothing"):
        savepoint.newest(tmp_path / "job")
    with pytest.raises(savepoint.SavepointError, match="gone does not exist"):
        savepoint.newest(tmp_path / "job", tmp_path / "gone")
