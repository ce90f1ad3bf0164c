"""JobManager failover time after a SIGKILL of the leader, per HA lease setting.

Starts a real etcd (as ``tests/etcd.py`` does: free ports, a temporary data
directory) and, per lease setting, a local cluster of two JobManagers (leader
and standby, elected through etcd) and ``--parallelism`` one-slot
TaskManagers with heartbeats every ``--heartbeat`` ms.  It runs
``tests/jobs/keyed_sum.py`` unbounded at ``--rate`` events/s with
exactly-once checkpoints every ``--interval`` ms, and, once a checkpoint has
completed under the current leader, SIGKILLs the leading JobManager and
measures from the kill:

* elected: the ``leadership_granted`` event in the new leader's log (its
  wall-clock timestamp), i.e. the old lease expired and a contender won;
* ready: the new leader's ``/readyz`` answers 200 with ``role: leader`` (it has published itself
  and recovered the job from the HA metadata);
* running: ``GET /jobs/{id}`` on the new leader says RUNNING with
  ``restored_from`` set (every task redeployed and restored);
* output: the source vertex's ``records_in`` of the new attempt, reported by
  TaskManager heartbeats, is above zero (records flow again).

The cluster's supervisor restarts the killed JobManager as a new standby
(as a Kubernetes Deployment would), so each setting runs ``--runs`` failovers
in one job; the killed process's replacement may itself win the election.
The job is then canceled and its committed output checked: every key's
counts must be exactly 1..n (nothing lost or duplicated across failovers).

Lease settings are ``duration/renew-deadline/retry-period`` in ms;
``default`` is client-go's 15000/10000/2000 (the engine's default too).

    uv run python bench/failover.py [--quick] [--runs 3]
        [--leases default,3000/2000/500,2000/1500/250] [--rate 20000]
        [--interval 1000] [--heartbeat 200] [--parallelism 2] [--workdir DIR]

``--quick`` runs the tuned settings only, one failover each (about 30 s);
the full run takes about 1.5-2 minutes, most of it the default lease's ~15 s
failovers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import aiohttp
import common

from streamjob_runtime.api import client, models
from streamjob_runtime.local import LocalCluster

JOB = str(common.REPO / "tests" / "jobs" / "keyed_sum.py")
DEFAULT_LEASE = "15000/10000/2000"
TUNED_LEASES = ["3000/2000/500", "2000/1500/250"]


def load_test_etcd() -> ModuleType:
    """``tests/etcd.py`` by path (``tests`` is not a package on the bench's path; the
    module's own ``from tests...`` imports find it from the repository root)."""
    if str(common.REPO) not in sys.path:
        sys.path.append(str(common.REPO))
    spec = importlib.util.spec_from_file_location(
        "streamjob_tests_etcd", common.REPO / "tests" / "etcd.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Failover:
    elected_s: float | None
    ready_s: float | None
    running_s: float | None
    output_s: float | None
    checkpoint_before: int | None  # latest completed checkpoint seen before the kill
    restored_from: int | None
    winner: str  # "standby" or "respawned"


@dataclass
class ConfigResult:
    label: str
    lease: str
    failovers: list[Failover] = field(default_factory=list)
    exact: bool = False
    detail: str = ""


def lease_args(lease: str) -> list[str]:
    duration, renew, retry = lease.split("/")
    return ["--ha-lease-duration", duration, "--ha-renew-deadline", renew,
            "--ha-retry-period", retry]  # fmt: skip


async def ready_leader(
    session: aiohttp.ClientSession, cluster: LocalCluster, exclude_pid: int | None = None
) -> tuple[str, int] | None:
    """(REST URL, pid) of the JobManager whose /readyz answers 200 as the leader, if any
    (a standby ready to take over answers 200 too, with ``role: standby``)."""
    for jm in list(cluster.jms):
        pid = jm.process.popen.pid
        if pid == exclude_pid or not jm.rest_port or jm.process.popen.poll() is not None:
            continue
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(f"{jm.metrics_url}/readyz") as resp:
                if resp.status == 200 and (await resp.json()).get("role") == "leader":
                    return jm.rest_url, pid
    return None


def granted_at(cluster: LocalCluster, pid: int, after: float) -> float | None:
    """Wall-clock time of the first ``leadership_granted`` after ``after`` in ``pid``'s log."""
    for jm in list(cluster.jms):
        if jm.process.popen.pid != pid:
            continue
        for line in jm.process.log_path.read_text(errors="replace").splitlines():
            if '"event":"leadership_granted"' not in line:
                continue
            with contextlib.suppress(ValueError):
                ts = float(json.loads(line)["ts"])
                if ts >= after:
                    return ts
    return None


async def wait_steady(
    session: aiohttp.ClientSession, cluster: LocalCluster, job_id: str, timeout_s: float
) -> tuple[str, int | None]:
    """Both JobManagers up, the job RUNNING and a checkpoint completed under this leader.

    Returns the leader's URL and the id of its latest completed checkpoint.
    """
    deadline = time.monotonic() + timeout_s
    first_seen: dict[str, int] = {}
    while True:
        found = await ready_leader(session, cluster)
        all_up = all(jm.rest_port and jm.process.popen.poll() is None for jm in list(cluster.jms))
        if found is not None and all_up:
            url = found[0]
            async with client.JobManagerClient(
                url, timeout_s=5, token=cluster.token, ssl=cluster.ssl_context()
            ) as jm:
                with contextlib.suppress(client.RestError, aiohttp.ClientError, TimeoutError):
                    job = await jm.job(job_id)
                    if job.state.terminal:
                        raise RuntimeError(f"job ended: {job.state.value}: {job.failure_cause}")
                    stats = await jm.checkpoints(job_id)
                    latest = stats.latest_completed.id if stats.latest_completed else 0
                    first_seen.setdefault(url, latest)
                    if (
                        job.state is models.JobStatus.RUNNING
                        and job.vertices[0].records_in > 0
                        and latest > first_seen[url]
                    ):
                        return url, latest
        if time.monotonic() > deadline:
            raise TimeoutError(f"job not steady within {timeout_s} s; see {cluster.log_dir}")
        await asyncio.sleep(0.1)


async def measure_failover(
    session: aiohttp.ClientSession,
    cluster: LocalCluster,
    job_id: str,
    checkpoint_before: int | None,
    timeout_s: float,
) -> Failover:
    index = await asyncio.to_thread(cluster.leader_index)
    killed = cluster.jms[index].process.popen.pid
    standbys = {jm.process.popen.pid for jm in cluster.jms} - {killed}
    killed_wall = time.time()
    killed_at = time.monotonic()
    cluster.kill_jobmanager(index)
    ready = running = output = None
    restored_from = None
    leader: tuple[str, int] | None = None
    deadline = killed_at + timeout_s
    while time.monotonic() < deadline and None in (ready, running, output):
        if leader is None:
            leader = await ready_leader(session, cluster, exclude_pid=killed)
            if leader is not None:
                ready = time.monotonic() - killed_at
        if leader is not None:
            async with client.JobManagerClient(
                leader[0], timeout_s=5, token=cluster.token, ssl=cluster.ssl_context()
            ) as jm:
                with contextlib.suppress(client.RestError, aiohttp.ClientError, TimeoutError):
                    job = await jm.job(job_id)
                    now = time.monotonic() - killed_at
                    if job.state.terminal:
                        raise RuntimeError(f"job ended: {job.state.value}: {job.failure_cause}")
                    if job.state is models.JobStatus.RUNNING and job.restored_from is not None:
                        if running is None:
                            running, restored_from = now, job.restored_from
                        if output is None and job.vertices[0].records_in > 0:
                            output = now
        await asyncio.sleep(0.02)
    elected = None
    winner = "-"
    if leader is not None:
        winner = "standby" if leader[1] in standbys else "respawned"
        ts = granted_at(cluster, leader[1], killed_wall)
        if ts is not None:
            elected = ts - killed_wall
    return Failover(elected, ready, running, output, checkpoint_before, restored_from, winner)


async def run_config(
    a: argparse.Namespace, endpoint: str, lease: str, workdir: Path
) -> ConfigResult:
    label = f"default ({lease})" if lease == DEFAULT_LEASE else f"tuned ({lease})"
    result = ConfigResult(label, lease)
    out = workdir / "output"
    cluster_id = f"bench-{os.getpid()}-{lease.replace('/', '-')}"
    ha = ["--ha", "etcd", "--ha-etcd-endpoints", endpoint, "--ha-cluster-id", cluster_id]
    job_args = [f"out={out}", "events=-1", f"rate={a.rate}", f"interval={a.interval}"]
    cluster = LocalCluster(
        workdir,
        taskmanagers=a.parallelism,
        slots=1,
        heartbeat_interval_ms=a.heartbeat,
        heartbeat_timeout_ms=max(10 * a.heartbeat, 5_000),
        jobmanagers=2,
        ha=[*ha, *lease_args(lease)],
    )
    timeout_s = 60 + 3 * int(lease.split("/")[0]) / 1000
    await asyncio.to_thread(cluster.start, 60)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            url = await asyncio.to_thread(lambda: cluster.rest_url)
            async with client.JobManagerClient(
                url, token=cluster.token, ssl=cluster.ssl_context()
            ) as jm:
                job_id = await jm.submit(
                    models.JobSubmission(
                        entrypoint=JOB,
                        args=job_args,
                        parallelism=a.parallelism,
                    )
                )
            for run in range(a.runs):
                _, checkpoint = await wait_steady(session, cluster, job_id, timeout_s)
                f = await measure_failover(session, cluster, job_id, checkpoint, timeout_s)
                result.failovers.append(f)
                print(
                    f"  {label}, failover {run + 1}: elected after {fmt(f.elected_s)}, ready"
                    f" after {fmt(f.ready_s)}, running after {fmt(f.running_s)}, source records"
                    f" after {fmt(f.output_s)} (new leader: the {f.winner}; restored checkpoint"
                    f" {f.restored_from}, latest completed before the kill {f.checkpoint_before})",
                    flush=True,
                )
            url, _ = await wait_steady(session, cluster, job_id, timeout_s)
            async with client.JobManagerClient(
                url, token=cluster.token, ssl=cluster.ssl_context()
            ) as jm:
                await jm.cancel(job_id)
                for _ in range(600):
                    if (await jm.job(job_id)).state.terminal:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise TimeoutError(f"job {job_id} did not end within 30 s")
    finally:
        await asyncio.to_thread(cluster.stop)
    result.exact, result.detail = common.check_counts_exact(out)
    return result


fmt = common.fmt_s
med = common.fmt_median_s


async def main_async(a: argparse.Namespace) -> bool:
    etcd_mod = load_test_etcd()
    if shutil.which("etcd") is None:
        print("etcd is not installed (apt-get install etcd-server)", file=sys.stderr)
        return False
    print(
        f"failover: keyed sum at {a.rate:,.0f} events/s, parallelism {a.parallelism},"
        f" exactly-once checkpoints every {a.interval} ms, heartbeats every {a.heartbeat} ms;"
        f" 2 JobManagers on etcd, {a.runs} leader SIGKILL(s) per lease setting"
        " (duration/renew deadline/retry period, ms)",
        flush=True,
    )
    etcd_dir = Path(tempfile.mkdtemp(prefix="streamjob-failover-etcd-", dir=a.workdir))
    etcd = etcd_mod.start_etcd(etcd_dir / "data")
    results = []
    ok = True
    try:
        for lease in a.leases:
            workdir = Path(tempfile.mkdtemp(prefix="streamjob-failover-", dir=a.workdir))
            r = await run_config(a, etcd.endpoint, lease, workdir)
            results.append(r)
            stale = [
                f
                for f in r.failovers
                if f.restored_from is None
                or (f.checkpoint_before is not None and f.restored_from < f.checkpoint_before)
            ]
            print(f"    output exact after {len(r.failovers)} failovers: {r.exact} ({r.detail})")
            if stale:
                print(f"    {len(stale)} failover(s) restored an older checkpoint than completed")
            good = r.exact and not stale
            ok = ok and good
            if good and a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"    logs and output kept in {workdir}")
    finally:
        etcd.stop()
        if a.workdir is None:
            shutil.rmtree(etcd_dir, ignore_errors=True)
    print()
    print(f"median time from the leader's SIGKILL (over {a.runs} failover(s) per setting)")
    print("| lease setting (ms) | new leader elected | /readyz 200 | job RUNNING, restored"
          " | source records flowing | exact |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        fs = r.failovers
        print(
            f"| {r.label} | {med([f.elected_s for f in fs])} | {med([f.ready_s for f in fs])}"
            f" | {med([f.running_s for f in fs])} | {med([f.output_s for f in fs])}"
            f" | {'yes' if r.exact else 'NO'} |"
        )
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tuned settings only, one failover each")
    p.add_argument("--runs", type=int, default=None, help="failovers per setting (default 3)")
    p.add_argument(
        "--leases",
        type=lambda s: [DEFAULT_LEASE if x == "default" else x for x in s.split(",")],
        default=None,
        help="comma-separated duration/renew/retry in ms, or 'default'",
    )
    p.add_argument("--rate", type=float, default=20_000)
    p.add_argument("--interval", type=int, default=1000, help="checkpoint interval, ms")
    p.add_argument("--heartbeat", type=int, default=200, help="heartbeat interval, ms")
    p.add_argument("--parallelism", type=int, default=2)
    p.add_argument(
        "--workdir",
        default=None,
        type=common.directory,
        help="keep every run's directory under this one",
    )
    a = p.parse_args()
    if a.leases is None:
        a.leases = TUNED_LEASES if a.quick else [DEFAULT_LEASE, *TUNED_LEASES]
    if a.runs is None:
        a.runs = 1 if a.quick else 3
    sys.exit(0 if asyncio.run(main_async(a)) else 1)


if __name__ == "__main__":
    main()
