"""CompletedCheckpointStore: which checkpoint a restore uses, and what retention keeps."""

from __future__ import annotations

import shutil
from pathlib import Path

from streamjob_runtime.checkpoint import metadata, store
from streamjob_runtime.state import storage


def complete(job_dir: Path, checkpoint_id: int) -> store.CompletedCheckpoint:
    """A real completed checkpoint on disk: a state file and its ``_metadata``."""
    directory = storage.checkpoint_dir(job_dir, checkpoint_id)
    storage.write_file(directory / "op-0.state", b"state")
    metadata.write(
        directory,
        metadata.CheckpointMetadata(
            version=metadata.FORMAT_VERSION,
            job_id="job",
            checkpoint_id=checkpoint_id,
            timestamp=1000 + checkpoint_id,
            kind="checkpoint",
            operators={},
        ),
    )
    return store.CompletedCheckpoint(checkpoint_id, 1000 + checkpoint_id, directory, 1.0, 5, 0.0)


def test_a_deleted_only_checkpoint_is_reported_and_a_restore_is_required(tmp_path: Path) -> None:
    s = store.CompletedCheckpointStore(tmp_path, retained=1)
    assert not s.select_restore().required  # nothing completed yet: starting empty is right
    s.add(complete(tmp_path, 1))
    shutil.rmtree(tmp_path / "chk-1")
    (tmp_path / "chk-2").mkdir()  # checkpoint 2 in flight: incomplete, not a restore point
    selection = s.select_restore()
    assert selection.restore is None
    assert selection.required
    assert [(k.directory, k.reason) for k in selection.skipped] == [
        (tmp_path / "chk-1", f"{tmp_path / 'chk-1'} is missing")
    ]
    message = selection.missing_message("job")
    assert str(tmp_path / "chk-1") in message
    assert "will not start from empty state" in message


def test_a_deleted_newest_checkpoint_falls_back_to_the_previous_one_and_names_it(
    tmp_path: Path,
) -> None:
    s = store.CompletedCheckpointStore(tmp_path, retained=2)
    s.add(complete(tmp_path, 1))
    s.add(complete(tmp_path, 2))
    shutil.rmtree(tmp_path / "chk-2")
    selection = s.select_restore()
    assert selection.restore is not None
    assert selection.restore[0] == tmp_path / "chk-1"
    assert [k.directory for k in selection.skipped] == [tmp_path / "chk-2"]


def test_a_deleted_initial_savepoint_is_required_too(tmp_path: Path) -> None:
    savepoint = tmp_path / "savepoint-1"
    s = store.CompletedCheckpointStore(tmp_path / "job", retained=1, initial=savepoint)
    selection = s.select_restore()
    assert selection.restore is None
    assert selection.required
    assert [k.directory for k in selection.skipped] == [savepoint]


def test_a_store_recovered_from_ha_keeps_the_recorded_checkpoints_through_retention(
    tmp_path: Path,
) -> None:
    recorded = [complete(tmp_path, i).directory for i in (1, 2, 3)]
    s = store.CompletedCheckpointStore(tmp_path, retained=3, recovered=recorded)
    s.recover()
    assert s.latest() == store.CompletedCheckpoint(3, 1003, recorded[2], 0.0, 0, 0.0)
    s.add(complete(tmp_path, 4))
    assert storage.checkpoint_ids(tmp_path) == [2, 3, 4]
    assert [c.checkpoint_id for c in s.completed] == [2, 3, 4]


def test_a_recovered_checkpoint_that_is_gone_is_reported_not_passed_over(tmp_path: Path) -> None:
    recorded = [complete(tmp_path, 7).directory]
    complete(tmp_path, 8)  # complete-looking but never recorded (a deposed leader's): ignored
    assert isinstance(recorded[0], Path)
    shutil.rmtree(recorded[0])
    s = store.CompletedCheckpointStore(tmp_path, retained=1, recovered=recorded)
    s.recover()
    selection = s.select_restore()
    assert selection.restore is None
    assert selection.required
    assert [k.directory for k in selection.skipped] == recorded
    assert s.max_id() == 7


def test_an_older_restore_point_that_is_gone_is_not_reported_when_a_newer_one_is_used(
    tmp_path: Path,
) -> None:
    savepoint = tmp_path / "savepoint-1"  # the job started from it; disposed since
    s = store.CompletedCheckpointStore(tmp_path / "job", retained=1, initial=savepoint)
    s.add(complete(tmp_path / "job", 5))
    selection = s.select_restore()
    assert selection.restore is not None
    assert selection.restore[0] == tmp_path / "job" / "chk-5"
    assert selection.skipped == ()
