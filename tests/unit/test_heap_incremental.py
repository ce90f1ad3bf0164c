"""Incremental ``hashmap`` checkpoints: unchanged tables stored once in ``shared/``, ref-counted."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from streamjob_runtime.checkpoint import store
from streamjob_runtime.state import heap, serialization, shared, storage, views


def take(
    tables: heap.SharedTables, job_dir: Path, checkpoint_id: int, snapshot: dict[str, Any]
) -> heap.IncrementalHeapState:
    """What a task does: plan and pickle (synchronous), upload, write the sidecar."""
    inline, refs, new = tables.plan(checkpoint_id, snapshot)
    state = heap.upload(serialization.dumps(inline), refs, new, job_dir)
    directory = storage.checkpoint_dir(job_dir, checkpoint_id)
    text = "".join(f"{p}\n" for p in sorted(state.shared.values()))
    storage.write_file(directory / f"op-0{shared.SUFFIX}", text.encode())
    return state


def test_an_unchanged_table_is_stored_once_and_reused_after_its_checkpoint_completed(
    tmp_path: Path,
) -> None:
    job_dir, tables = tmp_path / "job", heap.SharedTables("op-0")
    timers = serialization.PickledTable({1: 5, 2: 5}, serialization.dumps({1: 5, 2: 5}))
    values = {1: (1, 0)}
    first = take(tables, job_dir, 1, {"timers": timers, "v": values})
    assert first.shared == {}, "a table seen for the first time may change again: inline"
    second = take(tables, job_dir, 2, {"timers": timers, "v": values})
    assert list(second.shared) == ["timers"]
    assert second.uploaded_bytes == len(timers.data)
    # Checkpoint 2 has not completed: 3 must not reference its file (it may be discarded).
    third = take(tables, job_dir, 3, {"timers": timers, "v": values})
    assert third.shared["timers"] != second.shared["timers"]
    tables.confirm(3)
    fourth = take(tables, job_dir, 4, {"timers": timers, "v": values})
    assert fourth.shared == third.shared
    assert fourth.uploaded_bytes == 0
    assert fourth.read(job_dir) == {"timers": {1: 5, 2: 5}, "v": {1: (1, 0)}}
    # A changed table (a new snapshot object) is inline again.
    changed = serialization.PickledTable({1: 5}, serialization.dumps({1: 5}))
    fifth = take(tables, job_dir, 5, {"timers": changed, "v": values})
    assert fifth.shared == {}
    assert fifth.read(job_dir) == {"timers": {1: 5}, "v": {1: (1, 0)}}


def test_a_plan_whose_checkpoint_never_wrote_its_files_is_never_confirmed(tmp_path: Path) -> None:
    tables = heap.SharedTables("op-0")
    timers = serialization.PickledTable({1: 5}, serialization.dumps({1: 5}))
    tables.plan(1, {"timers": timers})
    _, refs, new = tables.plan(2, {"timers": timers})
    assert new
    tables.forget(2)  # e.g. its inline tables could not be pickled: a full snapshot instead
    tables.confirm(2)
    _, again, new = tables.plan(3, {"timers": timers})
    assert new
    assert again["timers"] != refs["timers"]


def test_a_shared_path_outside_shared_is_refused(tmp_path: Path) -> None:
    state = heap.IncrementalHeapState(serialization.dumps({}), {"timers": "../../etc/passwd"})
    with pytest.raises(ValueError, match="outside"):
        state.read(tmp_path)


@pytest.mark.parametrize("seed", range(6))
def test_shared_tables_a_retained_checkpoint_needs_are_kept_and_the_others_deleted(
    tmp_path: Path, seed: int
) -> None:
    """Timers that change or not, checkpoints that complete or fail, random retention:
    each retained checkpoint reads back exactly the state it saw, and ``shared/`` holds
    no file that no checkpoint on disk references."""
    rng = random.Random(seed)
    job_dir = tmp_path / "job"
    retained = rng.randint(1, 3)
    completed = store.CompletedCheckpointStore(job_dir, retained)
    backend = heap.KeyedStateBackend()
    queue = views.TimerQueue(backend, "timers")
    tables = heap.SharedTables("op-0")
    values: dict[int, int] = {}
    expected: dict[int, dict[str, dict[Any, Any]]] = {}
    taken: dict[int, heap.IncrementalHeapState] = {}
    for checkpoint_id in range(1, 25):
        for _ in range(rng.randint(1, 50)):
            values[rng.randrange(500)] = rng.randrange(10**6)
        if rng.random() < 0.3:
            queue.register(rng.randrange(500), rng.randrange(10**6))
        snapshot = {"v": values, "timers": queue.snapshot_table()}
        taken[checkpoint_id] = take(tables, job_dir, checkpoint_id, snapshot)
        if rng.random() < 0.25:
            continue  # declined or timed out: never completes, discarded later
        expected[checkpoint_id] = {name: dict(t) for name, t in snapshot.items() if t}
        completed.add(
            store.CompletedCheckpoint(
                checkpoint_id, 0, storage.checkpoint_dir(job_dir, checkpoint_id), 0, 0, 0
            )
        )
        tables.confirm(checkpoint_id)
        for kept in completed.completed:
            assert isinstance(kept.directory, Path)
            got = taken[kept.checkpoint_id].read(job_dir)
            assert {n: t for n, t in got.items() if t} == expected[kept.checkpoint_id]
        on_disk = {
            str(p.relative_to(job_dir / shared.SHARED))
            for p in (job_dir / shared.SHARED).rglob("*.table")
        }
        referenced = set().union(*(shared.references(d) for d in job_dir.glob("chk-*")))
        assert on_disk <= referenced, f"leaked: {on_disk - referenced}"
    assert any(state.shared for state in taken.values()), "no checkpoint was incremental"
