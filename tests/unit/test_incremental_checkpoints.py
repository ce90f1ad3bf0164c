"""Incremental RocksDB checkpoints: only new SST files upload; shared files are ref-counted."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from streamjob_runtime.checkpoint import store
from streamjob_runtime.graph import keygroups
from streamjob_runtime.state import rocksdb, shared, storage

MAXP = 128


def backend(tmp_path: Path) -> rocksdb.RocksDBKeyedStateBackend:
    return rocksdb.RocksDBKeyedStateBackend(
        tmp_path / "local", "op-0", lambda k: keygroups.key_group(k, MAXP)
    )


def checkpoint(
    state: rocksdb.RocksDBKeyedStateBackend, job_dir: Path, checkpoint_id: int
) -> rocksdb.IncrementalKeyedState:
    """What a task does: take, upload, write the sidecar beside the state file."""
    uploaded = state.upload(state.take_checkpoint(checkpoint_id), job_dir)
    directory = storage.checkpoint_dir(job_dir, checkpoint_id)
    refs = "".join(f"{p}\n" for p in sorted(uploaded.shared.values()))
    storage.write_file(directory / f"op-0{shared.SUFFIX}", refs.encode())
    return uploaded


def test_a_second_checkpoint_uploads_only_the_new_files(tmp_path: Path) -> None:
    state, job_dir = backend(tmp_path), tmp_path / "job"
    table = state.table("counts")
    for k in range(5_000):
        table[k] = k
    first = checkpoint(state, job_dir, 1)
    state.notify_checkpoint_complete(1)
    table[7] = -7
    second = checkpoint(state, job_dir, 2)
    assert first.uploaded_bytes > 0
    reused = set(first.shared.values()) & set(second.shared.values())
    assert reused == set(first.shared.values()), "the first checkpoint's SST was uploaded again"
    assert second.uploaded_bytes < first.uploaded_bytes / 5
    whole = rocksdb.read_incremental(second, job_dir, 0, MAXP - 1)
    assert whole == {"counts": {k: -7 if k == 7 else k for k in range(5_000)}}
    # A key-group range reads only its keys (a restore at another parallelism).
    part = rocksdb.read_incremental(second, job_dir, 0, 63)
    assert part["counts"] == {
        k: v for k, v in whole["counts"].items() if keygroups.key_group(k, MAXP) <= 63
    }
    state.close()


def test_an_unconfirmed_checkpoint_files_are_not_reused(tmp_path: Path) -> None:
    """Without notify_checkpoint_complete the next checkpoint uploads its files itself."""
    state, job_dir = backend(tmp_path), tmp_path / "job"
    state.table("t")["a"] = 1
    first = checkpoint(state, job_dir, 1)
    second = checkpoint(state, job_dir, 2)
    assert second.uploaded_bytes >= first.uploaded_bytes
    state.close()


def test_two_checkpoints_storing_the_same_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    # A checkpoint and the final one, both in flight, store the same new SST file: with
    # one temporary name the second rename found it gone (CI: "No such file or directory:
    # '.../.000067.sst.tmp' -> '.../000067.sst'", a declined checkpoint and a restart).
    source = tmp_path / "000067.sst"
    source.write_bytes(random.Random(7).randbytes(4 << 20))
    job_dir = tmp_path / "job"
    failures: list[BaseException] = []

    def store_it(start: threading.Barrier) -> None:
        start.wait()
        try:
            shared.put(job_dir, [("db-a1/000067.sst", source)])
        except BaseException as e:
            failures.append(e)

    for _ in range(20):
        start = threading.Barrier(2)
        writers = [threading.Thread(target=store_it, args=(start,)) for _ in range(2)]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    assert failures == []
    stored = job_dir / shared.SHARED / "db-a1"
    assert (stored / "000067.sst").read_bytes() == source.read_bytes()
    assert [p.name for p in stored.iterdir()] == ["000067.sst"]  # no temporary file left


@pytest.mark.parametrize("seed", range(8))
def test_shared_files_a_retained_checkpoint_needs_are_never_deleted(
    tmp_path: Path, seed: int
) -> None:
    """Random updates, checkpoints that complete or fail, random retention: after every step
    each retained checkpoint restores to exactly the state it saw, and no shared file is
    kept that no checkpoint on disk references."""
    rng = random.Random(seed)
    state, job_dir = backend(tmp_path), tmp_path / "job"
    retained = rng.randint(1, 3)
    completed = store.CompletedCheckpointStore(job_dir, retained)
    table = state.table("t")
    model: dict[Any, Any] = {}
    expected: dict[int, dict[Any, Any]] = {}
    taken: dict[int, rocksdb.IncrementalKeyedState] = {}
    for checkpoint_id in range(1, 16):
        for _ in range(rng.randint(1, 400)):
            key = rng.randrange(3_000)
            if rng.random() < 0.1 and key in model:
                del table[key]
                del model[key]
            else:
                model[key] = table[key] = rng.randrange(10**6)
        taken[checkpoint_id] = checkpoint(state, job_dir, checkpoint_id)
        if rng.random() < 0.25:
            continue  # declined or timed out: never completes, is discarded later
        expected[checkpoint_id] = dict(model)
        completed.add(
            store.CompletedCheckpoint(
                checkpoint_id, 0, storage.checkpoint_dir(job_dir, checkpoint_id), 0, 0, 0
            )
        )
        state.notify_checkpoint_complete(checkpoint_id)
        assert len(completed.completed) <= retained
        for kept in completed.completed:
            saved = taken[kept.checkpoint_id]
            assert isinstance(kept.directory, Path)
            assert shared.references(kept.directory) == set(saved.shared.values())
            assert all((job_dir / shared.SHARED / f).is_file() for f in saved.shared.values())
            got = rocksdb.read_incremental(saved, job_dir, 0, MAXP - 1).get("t", {})
            assert got == expected[kept.checkpoint_id]
        on_disk = {
            str(p.relative_to(job_dir / shared.SHARED))
            for p in (job_dir / shared.SHARED).rglob("*.sst")
        }
        referenced = set().union(
            *(shared.references(storage.checkpoint_dir(job_dir, i)) for i in range(1, 16))
        )
        assert on_disk <= referenced, f"leaked: {on_disk - referenced}"
    state.close()


@pytest.mark.parametrize("target", ["hashmap", "rocksdb"])
def test_an_incremental_checkpoint_restores_each_subtask_its_key_groups(
    tmp_path: Path, target: str
) -> None:
    """Rescale 1 -> 3: each reduce subtask reads its key-group range (RocksDB: raw, batched)."""
    from streamjob_runtime import config
    from streamjob_runtime.operators import base, keyed

    state, job_dir = backend(tmp_path), tmp_path / "job"
    table = state.table("reduce")
    keys = 25_000  # more than one restore batch
    for k in range(keys):
        table[k] = (k, 1)
    saved = checkpoint(state, job_dir, 1)
    state.close()
    settings = config.StateBackendConfig(config.StateBackendType(target), str(tmp_path))
    seen: dict[Any, Any] = {}
    for index in range(3):
        op = keyed.ReduceOperator(lambda v: v[0], lambda x, y: (x[0], x[1] + y[1]))
        op.setup(base.OperatorContext("op", index, 3, MAXP, 1, "job", settings), _Drop())
        restored = base.RestoredState(1, "job", {}, [[]], 1, [(saved, job_dir)])
        op.initialize_state(restored)
        op.open()
        mine = op.ctx.key_group_range
        part = op.backend.snapshot().get("reduce", {})
        assert all(mine.contains(keygroups.key_group(k, MAXP)) for k in part)
        seen.update(part)
        op.close()
    assert seen == {k: (k, 1) for k in range(keys)}


class _Drop:
    def emit(self, values: list[Any], timestamps: list[int] | None) -> None:
        pass

    def emit_watermark(self, watermark: int) -> None:
        pass


def test_a_restore_at_the_same_parallelism_links_the_files_and_reads_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's SST files become the new DB (hard links), and stay uploaded."""
    state = rocksdb.RocksDBKeyedStateBackend(
        tmp_path / "local", "a", lambda k: keygroups.key_group(k, MAXP), key_groups=(0, MAXP - 1)
    )
    job_dir = tmp_path / "job"
    for k in range(5_000):
        state.table("counts")[k] = k
        state.map_table("maps").put(k % 10, k, str(k))
    first = checkpoint(state, job_dir, 1)
    assert first.key_groups == (0, MAXP - 1)
    expected = state.snapshot()
    state.close()

    def no_scan(*args: Any) -> Any:
        raise AssertionError("restored entry by entry")

    monkeypatch.setattr(rocksdb, "_scan_checkpoint", no_scan)
    again = rocksdb.RocksDBKeyedStateBackend(
        tmp_path / "local", "b", lambda k: keygroups.key_group(k, MAXP), key_groups=(0, MAXP - 1)
    )
    again.restore_incremental(first, job_dir, 0, MAXP - 1)
    assert again.snapshot() == expected
    for name, relative in first.shared.items():
        assert (again.path / name).stat().st_ino == (job_dir / "shared" / relative).stat().st_ino
    again.table("counts")[1] = -1
    second = checkpoint(again, job_dir, 2)
    assert set(first.shared.values()) <= set(second.shared.values())
    assert second.uploaded_bytes < first.uploaded_bytes / 5, "restored files uploaded again"
    again.close()
    assert all((job_dir / "shared" / p).exists() for p in first.shared.values())


def local_backend(tmp_path: Path, name: str) -> rocksdb.RocksDBKeyedStateBackend:
    return rocksdb.RocksDBKeyedStateBackend(
        tmp_path / "local",
        name,
        lambda k: keygroups.key_group(k, MAXP),
        key_groups=(0, MAXP - 1),
        local_copies=tmp_path / "local" / "copies",
    )


def test_local_recovery_keeps_only_the_newest_completed_checkpoint_copy(tmp_path: Path) -> None:
    state, job_dir = local_backend(tmp_path, "a"), tmp_path / "job"
    copies = tmp_path / "local" / "copies"
    state.table("t")[1] = 1
    checkpoint(state, job_dir, 1)
    state.notify_checkpoint_complete(1)
    state.table("t")[2] = 2
    checkpoint(state, job_dir, 2)
    assert sorted(p.name for p in copies.iterdir()) == ["chk-1", "chk-2"]
    state.notify_checkpoint_complete(2)
    assert sorted(p.name for p in copies.iterdir()) == ["chk-2"]
    state.close()
    assert (copies / "chk-2").is_dir(), "a closed (failed) subtask keeps its copy"


def completed_with_local_copy(
    tmp_path: Path,
) -> tuple[Path, rocksdb.IncrementalKeyedState, dict[str, dict[Any, Any]]]:
    """2,000 keys in checkpoint 1 of a backend with local recovery, completed, then the
    backend closed: (the job's directory, checkpoint 1's state, what it holds)."""
    state, job_dir = local_backend(tmp_path, "a"), tmp_path / "job"
    for k in range(2_000):
        state.table("t")[k] = k
    first = checkpoint(state, job_dir, 1)
    state.notify_checkpoint_complete(1)
    expected = state.snapshot()
    state.close()
    return job_dir, first, expected


def test_a_restore_uses_the_local_copy_without_reading_checkpoint_storage(
    tmp_path: Path,
) -> None:
    job_dir, first, expected = completed_with_local_copy(tmp_path)
    # Checkpoint storage unreachable: only the local copy can restore this.
    for relative in first.shared.values():
        (job_dir / "shared" / relative).unlink()
    again = local_backend(tmp_path, "b")
    again.restore_incremental(first, job_dir, 0, MAXP - 1, tmp_path / "local" / "copies" / "chk-1")
    assert again.snapshot() == expected
    again.close()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_corrupt_local_copy_falls_back_to_checkpoint_storage(
    tmp_path: Path, damage: str
) -> None:
    job_dir, first, expected = completed_with_local_copy(tmp_path)
    copy = tmp_path / "local" / "copies" / "chk-1"
    sst = sorted(copy.glob("*.sst"))[0]
    if damage == "missing":
        sst.unlink()
    else:
        data = sst.read_bytes()
        sst.unlink()  # a hard link: never damage the working DB's (or storage's) file
        sst.write_bytes(data[: len(data) // 2])
    again = local_backend(tmp_path, "b")
    again.restore_incremental(first, job_dir, 0, MAXP - 1, copy)
    assert again.snapshot() == expected
    again.close()
