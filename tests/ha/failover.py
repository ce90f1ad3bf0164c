"""Shared by the etcd and Kubernetes HA tests: kill the leading JobManager mid-job."""

from __future__ import annotations

from pathlib import Path

from streamjob_runtime.api import models
from tests.conftest import Harness
from tests.integration.test_exactly_once_recovery import args, assert_exact


def kill_leader_mid_job(h: Harness, out: Path, records: int) -> str:
    """Run keyed_sum, SIGKILL the leader after ``records`` and a checkpoint, check exactness."""
    job = h.submit("keyed_sum", args(out), parallelism=2)
    h.wait_for(f"{records} source records", lambda: h.source_records(job) >= records)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    details = h.wait_terminal(job, timeout_s=120)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert_exact(out)
    return job
