"""JobManager high availability on a real etcd: failover, fencing, stepping down."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamjob_runtime.api import models
from streamjob_runtime.ha import etcd as ha_etcd
from streamjob_runtime.ha import services
from tests.conftest import Harness
from tests.etcd import Etcd
from tests.ha import failover, stepdown
from tests.integration.test_exactly_once_recovery import args, assert_exact

LEASE = ["--ha-lease-duration", "3000", "--ha-renew-deadline", "2000", "--ha-retry-period", "500"]


def ha_args(etcd: Etcd, cluster_id: str = "test") -> list[str]:
    return ["--ha", "etcd", "--ha-etcd-endpoints", etcd.endpoint, "--ha-cluster-id", cluster_id,
            *LEASE]  # fmt: skip


def events(h: Harness, name: str) -> list[dict[str, object]]:
    found = []
    for path in sorted(h.cluster.log_dir.glob("jobmanager-*.log")):
        for line in path.read_text().splitlines():
            if f'"event":"{name}"' in line:
                found.append({**json.loads(line), "log": path.name})
    return found


@pytest.mark.parametrize("jobmanagers", [2, 3])
def test_killed_leader_is_replaced_by_a_standby_and_the_output_is_exact(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path, jobmanagers: int
) -> None:
    h = cluster_factory(taskmanagers=2, jobmanagers=jobmanagers, ha=ha_args(etcd))
    job = failover.kill_leader_mid_job(h, tmp_path / "out", 12_000)
    recovered = events(h, "job_recovered")
    assert recovered
    assert recovered[0]["job_id"] == job
    # Clients find the new leader through the HA metadata too (its https:// address;
    # the job's CA and token given as a client outside the cluster gives them).
    credentials = ["--ca-file", str(h.cluster.ca_file), "--token", str(h.cluster.token)]
    listed = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "list", *ha_args(etcd), *credentials],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert f"{job}  FINISHED" in listed.stdout


def test_leader_killed_during_a_checkpoint_recovers_from_the_last_completed_one(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, jobmanagers=3, ha=ha_args(etcd))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, commit_delay=0.4, interval=300), parallelism=2)
    h.wait_for("a completed checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    h.wait_for("a checkpoint in flight", lambda: h.checkpoints(job).counts.in_progress >= 1)
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    details = h.wait_terminal(job, timeout_s=120)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert_exact(out)


def test_a_paused_leader_cannot_complete_a_checkpoint_after_it_is_deposed(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=2, jobmanagers=2, ha=ha_args(etcd))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out, interval=100), parallelism=2)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 2)
    old = h.cluster.leader_index()
    old_pid = h.cluster.leader_pid()
    old_log = h.cluster.jms[old].process.log_path
    h.cluster.kill_jobmanager(old, signal.SIGSTOP)
    try:
        h.wait_for("the standby to lead", lambda: h.cluster.leader_pid() != old_pid, 60)
        h.wait_for("the job to be recovered by the new leader",
                   lambda: h.job(job).restored_from is not None)  # fmt: skip
    finally:
        resumed_at = time.time()
        h.cluster.kill_jobmanager(old, signal.SIGCONT)
    h.wait_for("the deposed leader to exit", lambda: h.cluster.jms[old].process.popen.poll() == 3
               or "leadership_lost" in old_log.read_text())  # fmt: skip
    details = h.wait_terminal(job, timeout_s=120)
    assert details.state is models.JobStatus.FINISHED, details.failure_cause
    assert_exact(out)
    after = [json.loads(line) for line in old_log.read_text().splitlines()]
    late = [e for e in after if e["ts"] >= resumed_at]
    assert any(e["event"] == "leadership_lost" for e in late)
    assert not [e for e in late if e["event"] == "checkpoint_completed"], late


def test_a_deposed_leaders_metadata_write_is_fenced(etcd: Etcd) -> None:
    cfg = services.HaConfig(
        services.HaKind.ETCD, "fence", 2_000, 1_500, 500, etcd_endpoints=(etcd.endpoint,)
    )

    async def scenario() -> None:
        first = ha_etcd.EtcdLeaderElector(cfg, ha_etcd.connect(cfg), "first")
        second = ha_etcd.EtcdLeaderElector(cfg, ha_etcd.connect(cfg), "second")
        store = ha_etcd.EtcdHaStore(cfg, ha_etcd.connect(cfg))
        epochs: dict[str, int] = {}
        elected = {"first": asyncio.Event(), "second": asyncio.Event()}
        revoked: list[str] = []

        async def elected_as(name: str, epoch: int) -> None:
            epochs[name] = epoch
            elected[name].set()

        async def revoke(reason: str) -> None:
            revoked.append(reason)

        a = asyncio.create_task(first.run(lambda e: elected_as("first", e), revoke))
        await elected["first"].wait()
        await store.put_checkpoints(epochs["first"], "job", services.CheckpointRecord(5, ()))
        a.cancel()  # "first" stops renewing, as if paused; its lease expires
        b = asyncio.create_task(second.run(lambda e: elected_as("second", e), revoke))
        await elected["second"].wait()
        assert epochs["second"] > epochs["first"]
        with pytest.raises(services.FencedError, match="no longer the leader"):
            await store.put_checkpoints(epochs["first"], "job", services.CheckpointRecord(99, ()))
        await store.put_checkpoints(epochs["second"], "job", services.CheckpointRecord(7, ()))
        assert (await store.checkpoints("job")).next_checkpoint_id == 7
        b.cancel()
        await second.release()
        await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_leader_cut_off_from_etcd_steps_down_before_its_lease_can_expire(
    etcd: Etcd,
) -> None:
    cfg = services.HaConfig(
        services.HaKind.ETCD, "cutoff", 3_000, 2_000, 250, etcd_endpoints=(etcd.endpoint,)
    )

    elector = ha_etcd.EtcdLeaderElector(cfg, ha_etcd.connect(cfg), "solo")
    cut = functools.partial(etcd.process.send_signal, signal.SIGSTOP)
    heal = functools.partial(etcd.process.send_signal, signal.SIGCONT)
    stepped_down_after = asyncio.run(stepdown.seconds_to_step_down(elector, cut, heal))
    print(f"stepped down {stepped_down_after:.2f} s after losing etcd")
    # Safe: gone before the lease (3 s) could expire for another contender.
    assert stepped_down_after < 3.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ha-lease-duration", "2000", "--ha-renew-deadline", "2000"], "lease duration"),
        (["--ha-renew-deadline", "1000", "--ha-retry-period", "1000"], "retry period"),
        (
            [
                "--ha-lease-duration",
                "1000",
                "--ha-renew-deadline",
                "500",
                "--ha-retry-period",
                "100",
            ],
            "at least 2 s",
        ),
    ],
)
def test_bad_ha_settings_are_refused_at_start(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streamjob_runtime.cli", "jobmanager", "--checkpoint-dir",
         str(tmp_path), "--ha", "etcd", "--ha-etcd-endpoints", "127.0.0.1:1", *flags],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr


TRIGGER = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"


def test_a_stop_with_savepoint_is_answered_by_the_next_leader_and_restores_exactly(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    h = cluster_factory(taskmanagers=1, slots=2, jobmanagers=2, ha=ha_args(etcd))
    out = tmp_path / "out"
    job = h.submit("keyed_sum", args(out), parallelism=2)
    h.wait_for("5000 source records", lambda: h.source_records(job) >= 5_000)
    h.wait_for("a checkpoint", lambda: h.checkpoints(job).counts.completed >= 1)
    savepoints = str(tmp_path / "savepoints")
    h._call(lambda c: c.stop(job, savepoints, trigger_id=TRIGGER))
    stopped = h.wait_savepoint(job, TRIGGER)
    assert stopped.status is models.SavepointStatus.COMPLETED, stopped.failure_cause
    assert h.wait_terminal(job).state is models.JobStatus.FINISHED
    leader = h.cluster.leader_pid()
    h.cluster.kill_jobmanager(h.cluster.leader_index())
    h.wait_for("a new leader", lambda: h.cluster.leader_pid() != leader)
    # The job ended under the previous leader; its stop is still answered, by trigger id.
    assert h.savepoint_info(job, TRIGGER) == stopped
    restored = h.submit("keyed_sum", args(out), parallelism=2, savepoint=stopped.location)
    assert h.wait_terminal(restored).state is models.JobStatus.FINISHED
    assert_exact(out)


def test_a_job_its_leader_stopped_with_a_savepoint_is_not_resumed_by_the_next(
    etcd: Etcd, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # As a leader that died between recording the stop and the job's end leaves it:
    # the job still in the HA metadata, its stop recorded as completed.
    cfg = services.HaConfig(
        services.HaKind.ETCD, "stopped", 3_000, 2_000, 500, etcd_endpoints=(etcd.endpoint,)
    )
    submission = models.JobSubmission(
        entrypoint=str(Path(__file__).parents[1] / "jobs" / "keyed_sum.py"),
        args=args(tmp_path / "out"),
    )

    async def previous_leader() -> None:
        elector = ha_etcd.EtcdLeaderElector(cfg, ha_etcd.connect(cfg), "previous")
        store = ha_etcd.EtcdHaStore(cfg, ha_etcd.connect(cfg))
        elected: asyncio.Queue[int] = asyncio.Queue()

        async def revoked(reason: str) -> None:
            pass

        running = asyncio.create_task(elector.run(elected.put, revoked))
        epoch = await asyncio.wait_for(elected.get(), 10)
        raw = submission.model_dump_json().encode()
        await store.put_job(epoch, services.JobRecord("j-stopped", raw))
        stop = services.TriggerRecord(
            "j-stopped", TRIGGER, "stop", "COMPLETED", location="/sp/stopped", time_ms=1
        )
        await store.put_trigger(epoch, stop)
        await elector.release()
        running.cancel()
        await store.close()

    asyncio.run(asyncio.wait_for(previous_leader(), 30))
    h = cluster_factory(jobmanagers=1, ha=ha_args(etcd, cluster_id="stopped"))
    h.wait_for("the leader to take over", lambda: bool(events(h, "leader_ready")))
    [skipped] = events(h, "job_not_resumed")
    assert skipped["job_id"] == "j-stopped"
    assert not events(h, "job_recovered")
    listed = h._call(lambda c: c.list_jobs())
    assert isinstance(listed, models.JobList)
    assert listed.jobs == []
    info = h.savepoint_info("j-stopped", TRIGGER)
    assert (info.status, info.location) == (models.SavepointStatus.COMPLETED, "/sp/stopped")
