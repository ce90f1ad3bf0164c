"""Exactly-once output through TaskManager crashes (SIGKILL), compared with a model."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import models
from streamjob_runtime.connectors import files
from tests.conftest import Harness
from tests.jobs import file_words, keyed_sum

EVENTS = 40_000
KEYS = 97
RATE = 20_000


def committed(out: Path) -> Counter[tuple[int, int]]:
    rows = (line.split() for line in files.read_committed_lines(str(out)))
    return Counter((int(k), int(s)) for k, s in rows)


def assert_exact(out: Path, events: int = EVENTS) -> None:
    got, want = committed(out), keyed_sum.expected(events, KEYS)
    missing, extra = want - got, got - want
    assert not missing, f"{sum(missing.values())} lines missing, e.g. {list(missing)[:3]}"
    assert not extra, f"{sum(extra.values())} lines extra (duplicates), e.g. {list(extra)[:3]}"


def assert_finished_exactly(
    h: Harness, job: str, out: Path, restarts: int = 1, events: int = EVENTS
) -> None:
    """``job`` (keyed_sum of ``events``) FINISHED after at least ``restarts`` restarts, its
    committed output exact."""
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= restarts
    assert_exact(out, events)


def args(out: Path, **extra: object) -> list[str]:
    base = {"out": out, "events": EVENTS, "keys": KEYS, "rate": RATE}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_uninterrupted_run_produces_the_exact_output(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    job = h.submit("keyed_sum", args(tmp_path / "out", rate=200_000), parallelism=2)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED
    assert details.restarts == 0
    assert_exact(tmp_path / "out")
    # Nothing staged is left behind once the job finished.
    assert not list((tmp_path / "out" / ".staging" / "sink").rglob("*.inprogress"))


@pytest.mark.parametrize(("parallelism", "seed"), [(1, 1), (1, 2), (2, 3), (2, 4), (2, 5)])
def test_killed_taskmanager_at_a_random_point_resumes_without_loss_or_duplicates(
    cluster_factory: Callable[..., Harness], tmp_path: Path, parallelism: int, seed: int
) -> None:
    rng = random.Random(seed)
    h = cluster_factory(taskmanagers=parallelism)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out), parallelism=parallelism)
    threshold = int(EVENTS * rng.uniform(0.15, 0.75))
    h.wait_for(f"{threshold} source records", lambda: h.source_records(job) >= threshold)
    h.cluster.kill_taskmanager(rng.randrange(parallelism))
    assert_finished_exactly(h, job, out, restarts=1)


def test_taskmanager_killed_during_a_checkpoint_resumes_exactly(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    # The sink's pre-commit blocks 0.4 s: every checkpoint stays in flight that long.
    job = h.submit("keyed_sum", args(out, commit_delay=0.4, interval=300), parallelism=2)
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    h.wait_for("a checkpoint in flight", lambda: h.checkpoints(job).counts.in_progress >= 1)
    h.cluster.kill_taskmanager(1)
    assert_finished_exactly(h, job, out, restarts=1)


def test_two_taskmanager_kills_in_a_row_still_give_the_exact_output(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out), parallelism=2)
    h.wait_for("10000 source records", lambda: h.source_records(job) >= 10_000)
    h.cluster.kill_taskmanager(0)
    h.wait_for(
        "the first recovery",
        lambda: (d := h.job(job)).restarts >= 1 and d.state is models.JobStatus.RUNNING,
    )
    h.cluster.kill_taskmanager(1)
    assert_finished_exactly(h, job, out, restarts=2)


def test_at_least_once_mode_loses_nothing_after_a_kill(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, mode="at-least-once"), parallelism=2)
    h.wait_for("15000 source records", lambda: h.source_records(job) >= 15_000)
    h.cluster.kill_taskmanager(0)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    got, want = committed(out), keyed_sum.expected(EVENTS, KEYS)
    assert not (want - got), "at-least-once lost records"
    duplicates = sum((got - want).values())
    print(f"at-least-once: {duplicates} duplicate lines after the kill")


def test_file_source_resumes_from_its_byte_offsets_after_a_kill(
    cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    all_lines: list[str] = []
    inputs = []
    for n in range(3):
        lines = [" ".join(rng.choices(words, k=5)) for _ in range(8_000)]
        path = tmp_path / f"in-{n}.txt"
        path.write_text("\n".join(lines) + "\n")
        inputs.append(f"in={path}")
        all_lines.extend(lines)
    h = cluster_factory(taskmanagers=2)
    out = tmp_path / "out"
    job = h.submit("file_words", [f"out={out}", *inputs], parallelism=2)
    h.wait_for("8000 lines read", lambda: h.source_records(job) >= 8_000)
    h.cluster.kill_taskmanager(1)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert details.restarts >= 1
    rows = (line.split() for line in files.read_committed_lines(str(out)))
    got = Counter((w, int(c)) for w, c in rows)
    assert got == file_words.expected(all_lines)
