"""Operator reconcile latency, throughput and memory with N StreamJobs against the API emulator.

For each N (``--counts``, default 100 then 1,000) the benchmark starts, fresh:

* the Kubernetes API emulator (``tests/kube``) with the StreamJob CRD installed, in a
  process of its own (this script re-run with ``--serve-emulator``), so the emulator's
  CPU is measured apart from the operator's and from the benchmark's client;
* ONE operator process, ``python -m streamjob_operator --namespace default``, as in
  production: it campaigns for its Lease, leads, and runs kopf with the handlers,
  reaching the emulator through a kubeconfig; default settings otherwise (timer every
  2 s, a pass every 5 s while something is under way).

A fresh pair per N (not one growing run) so each N starts from the same empty API
server and a new operator: its RSS before and after, and its CPU, belong to that N only.

The benchmark's client watches the StreamJobs and every kind of child (Deployments,
Services, ConfigMaps, ServiceAccounts, Roles, RoleBindings, NetworkPolicies) in the
namespace, creates
one warm-up StreamJob and waits for its children (kopf is watching and the operator's
API client exists: the first pass's one-off start-up is not charged to the first of
the N), samples the operator's idle RSS, then creates the N StreamJobs as fast as it
can (``--concurrency`` POSTs in flight) and measures, per StreamJob, from its creation
(the earlier of the POST's answer and the watch's ADDED event) to the moment its
children are complete: the twelve objects ``desired.children`` renders (2 ServiceAccounts,
2 Roles, 2 RoleBindings, 2 NetworkPolicies, the submission ConfigMap, the JobManager
Service, the JobManager and TaskManager Deployments) have all been seen ADDED on the
watches. (bench/operator_scale.py follows StreamJobs to STABLE instead.) It
also records when each StreamJob's status first carries a lifecycle state.

Reported: children-created latency p50/p95/max, the time from the first POST to the
last StreamJob's children (converged) and StreamJobs/s over it, the CPU of the operator,
the emulator and the benchmark's client while converging (cores), the operator's RSS
(/proc VmRSS) before and in the steady state after (``--settle`` seconds after
convergence, the timer and progress passes running), its peak (VmHWM), RSS per
StreamJob, the steady-state CPU, and the operator's own metrics (passes by trigger,
failed passes, mean pass duration).

No pods run (no kubelet), so no JobManager ever answers and every StreamJob stays
"waiting for its JobManager", looked at again every progress-check interval (5 s): the
worst case of the operator's steady load. Observing asks a JobManager's REST API only
once its Deployment reports a ready pod, so these passes make no DNS lookup of the
Service's name and no connection attempt; the benchmark measures reconciliation, not
DNS timeouts or connection backoff. (Before observing had that rule, each pass looked
the name up; the benchmark still times 40 such lookups first and prints their spread,
showing what an operator outside the cluster, or behind a resolver that drops queries,
would wait for.) It also reports when the operator lost its Lease (its log) and whether
it stopped within 30 s of SIGTERM (the default termination grace period of a pod).

    uv run python bench/operator_reconcile.py [--quick] [--counts 100,1000]
        [--concurrency 16] [--settle 15] [--timeout 600] [--workdir DIR]

``--quick`` runs N = 100 only (about 40 s); the full run takes 4-5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import common

from streamjob_operator.api import models
from streamjob_operator.desired import children as desired_children
from streamjob_operator.desired import jobmanager, target

NAMESPACE = "default"
SPEC: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount", "parallelism": 2},
    "taskManager": {"replicas": 2},
    "savepoints": {"directory": "/savepoints"},
}
# the watched collections: the StreamJobs and every kind desired.children renders
STREAMJOBS = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{NAMESPACE}/{models.PLURAL}"
CHILD_COLLECTIONS = {
    "Deployment": f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
    "Service": f"/api/v1/namespaces/{NAMESPACE}/services",
    "ConfigMap": f"/api/v1/namespaces/{NAMESPACE}/configmaps",
    "ServiceAccount": f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
    "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles",
    "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings",
    "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies",
}
WARMUP = "warmup"
# the operator's default --progress-check-interval: how often a StreamJob whose pods are
# not up yet (all of them here) is looked at again
PROGRESS_CHECK_S = 5.0


BenchError = common.BenchError
pct = common.pct


# -- the emulator in its own process ---------------------------------------------------------


def serve_emulator(directory: Path) -> None:
    """``--serve-emulator DIR``: run the emulator with the CRD installed, write DIR/kubeconfig,
    print ``ready <url>``, serve until stdin closes, then print ``internal_errors <n>``."""
    sys.path.insert(0, str(common.REPO))
    from tests.kube import server

    from streamjob_operator.api import crd

    # a larger watch history than the tests' default: 1,000 StreamJobs make ~30,000 changes
    with server.KubeEmulator(history=200_000) as kube:
        kube.apply_crd(crd.build())
        kube.write_kubeconfig(directory / "kubeconfig", namespace=NAMESPACE)
        print(f"ready {kube.url}", flush=True)
        sys.stdin.read()
        errors = kube.internal_errors
        print(f"internal_errors {len(errors)}", flush=True)
        for e in errors[:5]:
            print(f"  {e}", flush=True)


class EmulatorProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.popen, self.url = common.start_emulator(__file__, workdir)
        self.kubeconfig = workdir / "kubeconfig"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> str:
        """Stop it; what it says of its internal errors (emulator bugs)."""
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        try:
            self.popen.stdin.close()
            out = self.popen.stdout.read()
            self.popen.wait(20)
        except (subprocess.TimeoutExpired, OSError):
            self.popen.kill()
            self.popen.wait(10)
            return "the emulator did not stop; killed"
        return out.strip()


# -- the operator process -------------------------------------------------------------------


class OperatorProcess:
    """``python -m streamjob_operator`` against the emulator, logging to a file."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.port = common.free_port()
        self.log_path = workdir / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        command = [
            sys.executable, "-m", "streamjob_operator",
            "--namespace", NAMESPACE,
            "--identity", "bench",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def get(self, session: aiohttp.ClientSession, path: str) -> str | None:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        return common.prometheus_samples(await self.get(session, "/metrics") or "")

    async def wait_leading(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise BenchError(f"the operator exited ({self.popen.returncode}): {self.tail()}")
            body = await self.get(session, "/healthz")
            if body is not None and json.loads(body).get("leader") is True:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the operator did not lead within {timeout_s} s: {self.tail()}")
            await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


# -- watching the API -----------------------------------------------------------------------


def expected_children(name: str) -> list[tuple[str, str]]:
    """(kind, name) of every child the operator creates for the StreamJob ``name``."""
    job = target.StreamJob(name, NAMESPACE, "uid", models.StreamJobSpec.model_validate(SPEC))
    return [(m["kind"], m["metadata"]["name"]) for m in desired_children.children(
        job, target.DeploymentTarget()
    )]  # fmt: skip


@dataclass
class Tracker:
    """What the watches saw, when (time.monotonic())."""

    owner: dict[tuple[str, str], str] = field(default_factory=dict)  # child -> StreamJob
    missing: dict[str, int] = field(default_factory=dict)  # StreamJob -> children not seen
    added: dict[str, float] = field(default_factory=dict)  # StreamJob ADDED
    answered: dict[str, float] = field(default_factory=dict)  # its POST answered
    complete: dict[str, float] = field(default_factory=dict)  # its children all seen
    recorded: dict[str, float] = field(default_factory=dict)  # a lifecycleState in status
    seen: set[tuple[str, str]] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def expect(self, name: str) -> None:
        kids = expected_children(name)
        for kid in kids:
            self.owner[kid] = name
        self.missing[name] = len(kids)

    def created(self, name: str) -> float | None:
        times = [t for t in (self.added.get(name), self.answered.get(name)) if t is not None]
        return min(times) if times else None

    def on_event(self, kind: str, event: dict[str, Any], now: float) -> None:
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return
        if kind == models.KIND:
            self.added.setdefault(name, now)
            if (obj.get("status") or {}).get("lifecycleState"):
                self.recorded.setdefault(name, now)
            return
        key = (kind, name)
        owner = self.owner.get(key)
        if owner is None or key in self.seen:
            return
        self.seen.add(key)
        self.missing[owner] -= 1
        if self.missing[owner] == 0:
            self.complete[owner] = now
            self.changed.set()

    async def until(
        self, names: list[str], timeout_s: float, watches: list[asyncio.Task[None]]
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(n in self.complete for n in names):
            for w in watches:
                if w.done():
                    w.result()
                    raise BenchError("a watch ended")
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                done = sum(1 for n in names if n in self.complete)
                raise BenchError(f"only {done} of {len(names)} StreamJobs got their children"
                                 f" within {timeout_s} s")  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))


async def watch(
    session: aiohttp.ClientSession, base: str, kind: str, path: str, tracker: Tracker,
    started: asyncio.Event,
) -> None:  # fmt: skip
    """Follow ``path`` from now (the namespace is empty of it at the start) until cancelled."""
    url = f"{base}{path}?watch=true&allowWatchBookmarks=true"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with session.get(url, timeout=timeout) as resp:
        if resp.status != 200:
            raise BenchError(f"watch {path}: {resp.status} {await resp.text()}")
        started.set()
        async for line in resp.content:
            if line.strip():
                tracker.on_event(kind, json.loads(line), time.monotonic())


async def create(session: aiohttp.ClientSession, base: str, name: str, tracker: Tracker) -> None:
    body = {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": SPEC,
    }
    async with session.post(f"{base}{STREAMJOBS}", json=body) as resp:
        if resp.status != 201:
            raise BenchError(f"creating {name}: {resp.status} {await resp.text()}")
        tracker.answered[name] = time.monotonic()


# -- one N ----------------------------------------------------------------------------------


@dataclass
class Sampler:
    """CPU of the operator, the emulator and this process, and the operator's RSS, sampled."""

    operator: int
    emulator: int
    rss_kb: list[tuple[float, int]] = field(default_factory=list)

    def cpu(self) -> tuple[float, float, float]:
        return (
            common.cpu_seconds(self.operator) or 0.0,
            common.cpu_seconds(self.emulator) or 0.0,
            common.cpu_seconds(os.getpid()) or 0.0,
        )

    async def run(self) -> None:
        while True:
            self.rss_kb.append((time.monotonic(), common.memory_kb(self.operator)[0]))
            await asyncio.sleep(0.2)


@dataclass
class Result:
    n: int
    latencies: list[float]
    recorded: list[float]
    create_s: float  # first POST sent -> last POST answered
    converge_s: float  # first POST sent -> last StreamJob's children complete
    cpu_s: tuple[float, float, float]  # operator, emulator, client while converging
    rss_before_kb: int
    rss_after_kb: int
    rss_peak_kb: int
    steady_cores: float
    steady_emulator_cores: float
    steady_s: float
    metrics_converge: dict[str, float]
    metrics_steady: dict[str, float]
    other_cores: float
    emulator_report: str = ""
    lease_losses: int = 0  # times the operator stopped leading (its log)
    failed_passes: int = 0  # "the reconcile pass failed" and "failed temporarily" lines
    operator_exit: int | None = None  # its exit code after SIGTERM (-9: killed after 30 s)


def delta(after: dict[str, float], before: dict[str, float], prefix: str) -> dict[str, float]:
    return {
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith(prefix) and v - before.get(k, 0.0)
    }


async def steady_rss(pid: int, window_s: float) -> int:
    """The median RSS (kB) over ``window_s`` seconds, sampled every 0.1 s."""
    samples = []
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        samples.append(common.memory_kb(pid)[0])
        await asyncio.sleep(0.1)
    return int(statistics.median(samples))


async def run_n(a: argparse.Namespace, n: int, workdir: Path) -> Result:
    emulator = EmulatorProcess(workdir)
    operator: OperatorProcess | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        operator = OperatorProcess(emulator.kubeconfig, workdir)
        tracker = Tracker()
        names = [f"sj-{i:04d}" for i in range(n)]
        for name in [WARMUP, *names]:
            tracker.expect(name)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30), read_bufsize=2**20
        ) as session:
            await operator.wait_leading(session, 60)
            started = []
            for kind, path in [(models.KIND, STREAMJOBS), *CHILD_COLLECTIONS.items()]:
                ev = asyncio.Event()
                started.append(ev)
                tasks.append(
                    asyncio.create_task(watch(session, emulator.url, kind, path, tracker, ev))
                )
            for ev in started:
                await asyncio.wait_for(ev.wait(), 10)
            await create(session, emulator.url, WARMUP, tracker)
            await tracker.until([WARMUP], 60, tasks)
            rss_before = await steady_rss(operator.pid, 3.0)
            sampler = Sampler(operator.pid, emulator.pid)
            tasks.append(asyncio.create_task(sampler.run()))
            metrics0 = await operator.metrics(session)
            cpu0 = sampler.cpu()
            other = common.OtherLoad()
            gate = asyncio.Semaphore(a.concurrency)

            async def one(name: str) -> None:
                async with gate:
                    await create(session, emulator.url, name, tracker)

            t0 = time.monotonic()
            await asyncio.gather(*(one(name) for name in names))
            created_s = time.monotonic() - t0
            await tracker.until(names, a.timeout, tasks)
            converge_s = max(tracker.complete[x] for x in names) - t0
            cpu1 = sampler.cpu()
            used = tuple(b - a_ for a_, b in zip(cpu0, cpu1, strict=True))
            other_cores = other.cores(sum(used))
            metrics1 = await operator.metrics(session)
            # steady state: the timer and progress passes of every StreamJob keep running
            steady_from = time.monotonic()
            await asyncio.sleep(a.settle)
            rss_after = await steady_rss(operator.pid, 3.0)
            cpu2 = sampler.cpu()
            steady_s = time.monotonic() - steady_from
            metrics2 = await operator.metrics(session)
            rss_peak = common.memory_kb(operator.pid)[1]
            if operator.popen.poll() is not None:
                raise BenchError(f"the operator exited: {operator.tail()}")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        code = operator.stop() if operator is not None else None
        report = emulator.stop()
    if code != 0:
        print(f"  the operator did not stop cleanly on SIGTERM within 30 s (exit code {code})")
    created = {x: tracker.created(x) for x in names}
    log = operator.log_path.read_text(errors="replace") if operator is not None else ""
    return Result(
        n=n,
        latencies=[tracker.complete[x] - c for x, c in created.items() if c is not None],
        recorded=[
            tracker.recorded[x] - c
            for x, c in created.items()
            if c is not None and x in tracker.recorded
        ],
        create_s=created_s,
        converge_s=converge_s,
        cpu_s=(used[0], used[1], used[2]),
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        rss_peak_kb=rss_peak,
        steady_cores=(cpu2[0] - cpu1[0]) / steady_s,
        steady_emulator_cores=(cpu2[1] - cpu1[1]) / steady_s,
        steady_s=steady_s,
        metrics_converge=delta(metrics1, metrics0, "streamjob_operator_"),
        metrics_steady=delta(metrics2, metrics1, "streamjob_operator_"),
        other_cores=other_cores,
        emulator_report=report,
        # before the SIGTERM (the operator logs "is stopping" first, kopf "Signal SIGTERM"
        # in older versions): a clean stop also stops leading
        lease_losses=re.split(r"is stopping: |Signal SIGTERM", log)[0].count(
            "no longer holds the Lease"
        ),
        failed_passes=log.count("failed temporarily"),
        operator_exit=code,
    )


# -- report ---------------------------------------------------------------------------------


def passes(metrics: dict[str, float]) -> str:
    by_trigger = {
        k.split('trigger="')[1].split('"')[0]: int(v)
        for k, v in metrics.items()
        if k.startswith("streamjob_operator_reconciles_total{")
    }
    errors = int(sum(v for k, v in metrics.items()
                     if k.startswith("streamjob_operator_reconcile_errors_total")))  # fmt: skip
    count = metrics.get("streamjob_operator_reconcile_duration_seconds_count", 0.0)
    total = metrics.get("streamjob_operator_reconcile_duration_seconds_sum", 0.0)
    mean = f"{1000 * total / count:.0f} ms" if count else "-"
    parts = ", ".join(f"{t} {c}" for t, c in sorted(by_trigger.items()))
    return f"{int(count)} passes ({parts or 'none'}), {errors} failed, mean {mean}"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def print_result(r: Result) -> None:
    lat = r.latencies
    print(f"  N = {r.n:,}: {r.n:,} StreamJobs created in {r.create_s:.2f} s"
          f" ({r.n / r.create_s:,.0f}/s); children of all within {r.converge_s:.2f} s"
          f" ({r.n / r.converge_s:,.1f} StreamJobs/s)")  # fmt: skip
    print(f"    children created: p50 {pct(lat, 0.5):.2f} s, p95 {pct(lat, 0.95):.2f} s,"
          f" max {max(lat):.2f} s; status recorded: p50 {pct(r.recorded, 0.5):.2f} s,"
          f" max {max(r.recorded):.2f} s ({len(r.recorded)} of {r.n})")  # fmt: skip
    op, em, cl = r.cpu_s
    c = r.converge_s
    print(f"    CPU while converging: operator {op:.1f} s ({op / c:.2f} cores), emulator"
          f" {em:.1f} s ({em / c:.2f} cores), benchmark client {cl:.1f} s ({cl / c:.2f} cores);"
          f" other processes {r.other_cores:.2f} cores")  # fmt: skip
    print(f"    operator RSS: before {mb(r.rss_before_kb)} (1 warm-up StreamJob), steady after"
          f" {mb(r.rss_after_kb)}, peak {mb(r.rss_peak_kb)};"
          f" {(r.rss_after_kb - r.rss_before_kb) / r.n:.0f} kB per StreamJob")  # fmt: skip
    done = r.metrics_steady.get("streamjob_operator_reconcile_duration_seconds_count", 0.0)
    rate = done / r.steady_s
    per_pass = f"{1000 * r.steady_cores / rate:.0f} ms" if rate else "-"
    print(f"    steady state ({r.steady_s:.0f} s): operator {r.steady_cores:.2f} cores, emulator"
          f" {r.steady_emulator_cores:.2f} cores; {rate:.0f} passes/s done, where a progress"
          f" check every {PROGRESS_CHECK_S:.0f} s of each StreamJob asks for"
          f" {(r.n + 1) / PROGRESS_CHECK_S:.0f}/s; operator CPU per pass {per_pass}")  # fmt: skip
    print(f"    operator while converging: {passes(r.metrics_converge)}")
    print(f"    operator in the steady state: {passes(r.metrics_steady)}")
    if r.lease_losses or r.failed_passes:
        print(f"    operator log: lost the Lease {r.lease_losses} time(s) (renewals not"
              f" answered within the renew deadline); {r.failed_passes} handler calls failed"
              " temporarily (retried)")  # fmt: skip
    if r.emulator_report != "internal_errors 0":
        print(f"    emulator: {r.emulator_report}")


def ratio(a: float, b: float) -> str:
    return f"{b / a:.1f}x" if a else "-"


def probe_resolver(count: int = 40) -> None:
    """Time ``count`` lookups of JobManager Service names (as a pass's REST observation
    makes them) on threads of their own, and print the spread: a resolver that drops
    queries makes some wait for its timeout (5 s by default)."""
    host = urllib.parse.urlsplit(jobmanager.rest_url(
        target.StreamJob("sj-0000", NAMESPACE, "uid", models.StreamJobSpec.model_validate(SPEC)),
        target.DeploymentTarget(),
    )).hostname  # fmt: skip
    assert host is not None

    def lookup(i: int) -> tuple[float, str]:
        t0 = time.monotonic()
        try:
            socket.getaddrinfo(host.replace("sj-0000", f"sj-{i:04d}"), 8081)
            answer = "resolved"
        except OSError as e:
            answer = type(e).__name__
        return time.monotonic() - t0, answer

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lookup, range(count)))
    times = sorted(t for t, _ in results)
    slow = sum(1 for t in times if t > 1.0)
    answers = sorted({a for _, a in results})
    print(f"this machine's resolver, {count} lookups of JobManager Service names"
          f" ({host} ...): {', '.join(answers)}; p50 {1000 * pct(times, 0.5):.0f} ms,"
          f" max {times[-1]:.2f} s, {slow} over 1 s")  # fmt: skip


async def main_async(a: argparse.Namespace) -> bool:
    print(f"operator reconcile: one operator process, the API emulator in another process;"
          f" N StreamJobs created {a.concurrency} POSTs at a time, each rendering"
          f" {len(expected_children('x'))} children", flush=True)  # fmt: skip
    await asyncio.to_thread(probe_resolver)
    results = []
    for n in a.counts:
        workdir = Path(tempfile.mkdtemp(prefix=f"streamjob-operator-{n}-", dir=a.workdir))
        try:
            r = await run_n(a, n, workdir)
        except BenchError as e:
            print(f"  N = {n}: {e}; logs in {workdir}")
            return False
        print_result(r)
        results.append(r)
        if a.workdir is None and r.operator_exit == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"    logs kept in {workdir}")
        sys.stdout.flush()
    print()
    print("| StreamJobs | children created p50 / p95 / max | converged | StreamJobs/s"
          " | operator CPU (cores) | emulator CPU (cores) | operator RSS before / after / peak"
          " | per StreamJob | steady-state operator CPU |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        lat = r.latencies
        print(f"| {r.n:,} | {pct(lat, 0.5):.2f} / {pct(lat, 0.95):.2f} / {max(lat):.2f} s"
              f" | {r.converge_s:.1f} s | {r.n / r.converge_s:.1f}"
              f" | {r.cpu_s[0] / r.converge_s:.2f} | {r.cpu_s[1] / r.converge_s:.2f}"
              f" | {mb(r.rss_before_kb)} / {mb(r.rss_after_kb)} / {mb(r.rss_peak_kb)}"
              f" | {(r.rss_after_kb - r.rss_before_kb) / r.n:.0f} kB"
              f" | {r.steady_cores:.2f} |")  # fmt: skip
    if len(results) >= 2:
        small, big = results[0], results[-1]
        grow = ratio(small.rss_after_kb - small.rss_before_kb, big.rss_after_kb - big.rss_before_kb)
        p50 = ratio(pct(small.latencies, 0.5), pct(big.latencies, 0.5))
        print(f"\nN x{big.n / small.n:.0f}: p50 latency {p50},"
              f" converge time {ratio(small.converge_s, big.converge_s)},"
              f" throughput {ratio(small.n / small.converge_s, big.n / big.converge_s)},"
              f" RSS growth {grow}, steady-state operator CPU"
              f" {ratio(small.steady_cores, big.steady_cores)}")  # fmt: skip
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N = 100 only")
    p.add_argument(
        "--counts",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated numbers of StreamJobs (default 100,1000)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="POSTs in flight")
    p.add_argument("--settle", type=float, default=15.0, help="steady-state window, s")
    p.add_argument("--timeout", type=float, default=600.0, help="per N, to converge, s")
    p.add_argument(
        "--workdir",
        default=None,
        type=common.directory,
        help="keep every run's logs under this directory",
    )
    p.add_argument("--serve-emulator", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_emulator is not None:
        serve_emulator(Path(a.serve_emulator))
        return
    if a.counts is None:
        a.counts = [100] if a.quick else [100, 1000]
    if a.workdir is not None:
        Path(a.workdir).mkdir(parents=True, exist_ok=True)
    # a SIGTERM (run_all's timeout, a user) unwinds like Ctrl-C: the processes are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(0 if asyncio.run(main_async(a)) else 1)


if __name__ == "__main__":
    main()
