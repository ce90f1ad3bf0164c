"""Retained checkpoints across a JobManager failover on a real etcd."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from streamjob_runtime.api import models
from streamjob_runtime.state import storage
from tests.conftest import Harness
from tests.etcd import Etcd
from tests.ha.test_etcd_failover import ha_args


def complete_checkpoints(job_dir: Path) -> list[int]:
    return [
        i
        for i in storage.checkpoint_ids(job_dir)
        if (storage.checkpoint_dir(job_dir, i) / storage.METADATA).exists()
    ]


def keyed_sum_args(out: Path, interval: int, retained: int) -> list[str]:
    return [f"out={out}", "events=-1", "rate=20000", f"interval={interval}",
            f"retained={retained}"]  # fmt: skip


def test_a_new_leader_keeps_the_retained_checkpoints_the_ha_record_lists(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, jobmanagers=2, ha=ha_args(etcd))
    job = h.submit("keyed_sum", keyed_sum_args(tmp_path / "out", 300, 3), parallelism=2)
    assert h.cluster.checkpoint_dir is not None
    job_dir = Path(h.cluster.checkpoint_dir) / job
    h.wait_for("three retained checkpoints", lambda: len(complete_checkpoints(job_dir)) >= 3)
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    h.wait_for(
        "two checkpoints completed by the new leader",
        lambda: h.job(job).restored_from is not None and h.checkpoints(job).counts.completed >= 2,
        timeout_s=90,
    )
    # Retention counts the checkpoints recovered from the HA record: the newest three
    # stay, not only the new leader's own.
    kept = complete_checkpoints(job_dir)
    assert len(kept) >= 3, f"retention kept only {kept}"
    h.cancel(job)
    assert h.wait_terminal(job).state is models.JobStatus.CANCELED


def test_a_new_leader_fails_the_job_when_the_recorded_checkpoint_is_gone(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, jobmanagers=2, ha=ha_args(etcd))
    # A long interval: no other checkpoint completes between the deletion and the kill.
    job = h.submit("keyed_sum", keyed_sum_args(tmp_path / "out", 5000, 1), parallelism=2)
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    latest = h.checkpoints(job).latest_completed
    assert latest is not None
    shutil.rmtree(latest.path)
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    details = h.wait_terminal(job)
    assert details.state is models.JobStatus.FAILED
    assert details.restored_from is None
    cause = details.failure_cause or ""
    assert f"{latest.path} is missing" in cause
    assert "will not start from empty state" in cause
