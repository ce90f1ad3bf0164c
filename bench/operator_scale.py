"""Operator at scale: N StreamJobs reconciled to their steady state, memory, steady-state cost,
a clean SIGTERM and a resume.

One operator process (``python -m streamjob_operator``, default settings: passes when
due, progress check 5 s, checkpoint status every 15 s) against the Kubernetes API emulator
(``tests/kube``) in a process of its own. This script plays what a cluster would add:

* a Deployment controller: every Deployment the operator writes is marked ready (all
  replicas) through its status subresource as soon as it is seen on a watch;
* the JobManagers: one HTTP server answering the REST API of every StreamJob's
  JobManager (the operator reaches it with ``--jobmanager-url-template
  http://127.0.0.1:PORT/{service}``): a submitted job RUNS at once and completes a
  checkpoint every second.

N StreamJobs (``--count``, default 1,000; keyed_sum-like spec, stability gate of one
checkpoint and a 1 s window) are created ``--concurrency`` POSTs at a time after one
warm-up StreamJob reached STABLE. Reported:

* converged: from the first POST to the last StreamJob STABLE (its status says
  ``lifecycleState: STABLE``: children applied, Deployments ready, job submitted and
  RUNNING, stability gate passed), with p50/p95/max per StreamJob from its creation;
* the operator's RSS (/proc VmRSS): before (1 warm-up StreamJob), in the steady state
  (median over ``--settle`` seconds after convergence), and its peak (VmHWM);
* the steady state: the operator's CPU, passes/s, and the API requests it made per
  second by verb (from the emulator's request log; the Lease renewals apart). A running
  job is looked at every 15 s (``--checkpoint-status-interval``) and its last
  checkpoint written to status then: that write is the steady state's only one;
* SIGTERM: how long the operator took to exit and whether it handed its Lease back;
* a resume: a new operator leads and runs a resume pass for every StreamJob; the time
  until all did, and the writes they made (expected: none).

    uv run python bench/operator_scale.py [--count 1000] [--concurrency 16] [--settle 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import common
from aiohttp import web

from streamjob_operator.api import models
from streamjob_runtime.api import models as rest

NAMESPACE = "default"
SPEC: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount", "parallelism": 2},
    "taskManager": {"replicas": 2},
    "checkpointing": {"interval": "1s"},
    "savepoints": {"directory": "/savepoints"},
    "stability": {"checkpoints": 1, "window": "1s", "timeout": "30m"},
}
STREAMJOBS = f"/apis/{models.GROUP}/{models.VERSION}/namespaces/{NAMESPACE}/{models.PLURAL}"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
LEASE = "streamjob-operator"
CHECKPOINT_EVERY_MS = 1000


BenchError = common.BenchError
pct = common.pct


# -- the emulator in its own process, counting requests ---------------------------------------


def serve_emulator(directory: Path) -> None:
    """``--serve-emulator DIR``: the emulator with the CRD; writes DIR/kubeconfig, prints
    ``ready <url>``; each stdin line ``counts`` prints the requests since the last as JSON
    ``{"METHOD plural": n}``; stdin closed: exit."""
    sys.path.insert(0, str(common.REPO))
    from tests.kube import server

    from streamjob_operator.api import crd

    with server.KubeEmulator(history=400_000) as kube:
        # the request log keeps the last 10,000 by default: counts need every one
        log = collections.deque(maxlen=10_000_000)
        kube._call(lambda: setattr(kube._server, "requests", log))
        kube.apply_crd(crd.build())
        kube.write_kubeconfig(directory / "kubeconfig", namespace=NAMESPACE)
        print(f"ready {kube.url}", flush=True)
        seen = 0
        for line in sys.stdin:
            if line.strip() != "counts":
                continue
            records = kube.requests
            counts: collections.Counter[str] = collections.Counter()
            for r in itertools.islice(records, seen, None):
                parts = r.path.strip("/").split("/")
                if "watch=" in r.query or "namespaces" not in parts:
                    continue
                at = parts.index("namespaces") + 2
                if at >= len(parts):
                    continue
                plural = parts[at] + ("/status" if parts[-1] == "status" else "")
                counts[f"{r.method} {plural}"] += 1
            seen = len(records)
            print(json.dumps(counts), flush=True)
        errors = kube.internal_errors
        print(f"internal_errors {len(errors)}", flush=True)


class Emulator:
    def __init__(self, workdir: Path) -> None:
        self.popen, self.url = common.start_emulator(__file__, workdir)
        self.kubeconfig = workdir / "kubeconfig"

    def counts(self) -> dict[str, int]:
        """Requests since the last call, by ``METHOD plural``."""
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        self.popen.stdin.write("counts\n")
        self.popen.stdin.flush()
        answer: dict[str, int] = json.loads(self.popen.stdout.readline())
        return answer

    def stop(self) -> None:
        assert self.popen.stdin is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        try:
            self.popen.wait(20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


# -- the operator process ---------------------------------------------------------------------


class Operator:
    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        identity: str,
        jm_url: str,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = common.free_port()
        self.identity = identity
        self.log_path = workdir / f"operator-{identity}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        command = [
            sys.executable, "-m", "streamjob_operator",
            "--namespace", NAMESPACE, "--identity", identity,
            "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port),
            "--jobmanager-url-template", jm_url + "/{service}",
            "--no-network-policy",
            *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        return common.prometheus_samples(text)

    async def wait_leading(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise BenchError(f"the operator exited: {self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                url = f"http://127.0.0.1:{self.port}/healthz"
                async with session.get(url) as resp:
                    if resp.status == 200 and (await resp.json()).get("leader") is True:
                        return
            if time.monotonic() > deadline:
                raise BenchError(f"the operator did not lead within {timeout_s} s")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


# -- the JobManagers: one server answering for every StreamJob's ------------------------------


class JobManagers:
    """The REST API of every StreamJob's JobManager, by Service name (the URL's first
    segment): jobs submitted RUN at once and complete a checkpoint every second."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, rest.JobOverview]] = collections.defaultdict(dict)
        self._ids = itertools.count(1)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        r = app.router
        r.add_get("/{svc}/jobs", self._list)
        r.add_post("/{svc}/jobs", self._submit)
        r.add_get("/{svc}/jobs/{jid}", self._details)
        r.add_get("/{svc}/jobs/{jid}/checkpoints", self._checkpoints)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @staticmethod
    def _json(model: Any, status: int = 200) -> web.Response:
        return web.Response(
            text=model.model_dump_json(), status=status, content_type="application/json"
        )

    def _job(self, request: web.Request) -> rest.JobOverview | None:
        return self.jobs[request.match_info["svc"]].get(request.match_info["jid"])

    async def _list(self, request: web.Request) -> web.Response:
        jobs = list(self.jobs[request.match_info["svc"]].values())
        return self._json(rest.JobList(jobs=jobs))

    async def _submit(self, request: web.Request) -> web.Response:
        rest.JobSubmission.model_validate_json(await request.read())
        jid = f"{next(self._ids):032x}"
        self.jobs[request.match_info["svc"]][jid] = rest.JobOverview(
            jid=jid,
            name="bench",
            state=rest.JobStatus.RUNNING,
            start_time=int(time.time() * 1000),
            restarts=0,
        )
        return self._json(rest.JobSubmitted(jobid=jid), 202)

    async def _details(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._json(rest.ErrorResponse(error="no such job"), 404)
        return self._json(
            rest.JobDetails(
                jid=job.jid,
                name=job.name,
                state=job.state,
                start_time=job.start_time,
                end_time=None,
                duration_ms=0,
                restarts=0,
                attempt=1,
                restored_from=None,
                failure_cause=None,
                vertices=[],
            )
        )

    async def _checkpoints(self, request: web.Request) -> web.Response:
        job = self._job(request)
        if job is None:
            return self._json(rest.ErrorResponse(error="no such job"), 404)
        n = max(0, (int(time.time() * 1000) - job.start_time) // CHECKPOINT_EVERY_MS)
        latest = None
        if n:
            latest = rest.CompletedCheckpointInfo(
                id=n,
                path=f"/checkpoints/{job.jid}/chk-{n}",
                trigger_timestamp=job.start_time + n * CHECKPOINT_EVERY_MS,
                duration_ms=1.0,
                bytes=1,
                alignment_ms=0.0,
            )
        counts = rest.CheckpointCounts(completed=n, failed=0, in_progress=0)
        return self._json(
            rest.CheckpointingStatistics(counts=counts, latest_completed=latest, history=[])
        )


# -- the Deployment controller and the StreamJob watch -----------------------------------------


async def watch(
    session: aiohttp.ClientSession, url: str, on_event: Any, started: asyncio.Event
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with session.get(f"{url}?watch=true", timeout=timeout) as resp:
        if resp.status != 200:
            raise BenchError(f"watch {url}: {resp.status} {await resp.text()}")
        started.set()
        async for line in resp.content:
            if line.strip():
                await on_event(json.loads(line))


class DeploymentController:
    """Marks each Deployment ready once its generation is new to it (as kubelets and the
    Deployment controller would, at once)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.marked = 0

    async def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") in ("ADDED", "MODIFIED"):
            obj = event["object"]
            meta = obj["metadata"]
            status = obj.get("status") or {}
            if not meta.get("deletionTimestamp") and status.get("observedGeneration") != meta.get(
                "generation"
            ):
                self.queue.put_nowait(obj)

    async def run(self) -> None:
        while True:
            obj = await self.queue.get()
            replicas = obj["spec"].get("replicas", 1)
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "readyReplicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
            }
            url = f"{self.base}{DEPLOYMENTS}/{obj['metadata']['name']}/status"
            async with self.session.put(url, json=obj) as resp:
                if resp.status == 200:
                    self.marked += 1
                # 409: it changed meanwhile; its MODIFIED event brings it back


class Stable:
    """When each StreamJob was first seen STABLE."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_event(self, event: dict[str, Any]) -> None:
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        if (obj.get("status") or {}).get("lifecycleState") == "STABLE" and name not in self.at:
            self.at[name] = time.monotonic()
            self.changed.set()

    async def until(self, names: list[str], timeout_s: float, watches: list[Any]) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(n in self.at for n in names):
            for w in watches:
                if w.done():
                    w.result()
                    raise BenchError("a watch ended")
            if time.monotonic() > deadline:
                done = sum(1 for n in names if n in self.at)
                raise BenchError(f"{done} of {len(names)} StreamJobs STABLE in {timeout_s} s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)


def mb(kb: float) -> str:
    return f"{kb / 1024:.0f} MB"


def rates(counts: dict[str, int], seconds: float) -> str:
    verbs: collections.Counter[str] = collections.Counter()
    for key, n in counts.items():
        method, plural = key.split(" ", 1)
        if plural != "leases":
            verbs["write" if method != "GET" else "read"] += n
    leases = sum(n for k, n in counts.items() if k.endswith(" leases"))
    detail = ", ".join(
        f"{k} {n / seconds:.1f}/s" for k, n in sorted(counts.items()) if not k.endswith("leases")
    )
    return (
        f"reads {verbs['read'] / seconds:.1f}/s, writes {verbs['write'] / seconds:.1f}/s"
        f" (Lease {leases / seconds:.1f}/s apart) [{detail}]"
    )


async def main_async(a: argparse.Namespace, workdir: Path) -> None:
    emulator = Emulator(workdir)
    jms = JobManagers()
    await jms.start()
    operator: Operator | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            controller = DeploymentController(session, emulator.url)
            stable = Stable()
            started = [asyncio.Event(), asyncio.Event()]
            tasks += [
                asyncio.create_task(
                    watch(session, emulator.url + DEPLOYMENTS, controller.on_event, started[0])
                ),
                asyncio.create_task(
                    watch(session, emulator.url + STREAMJOBS, stable.on_event, started[1])
                ),
                *(asyncio.create_task(controller.run()) for _ in range(4)),
            ]
            for ev in started:
                await asyncio.wait_for(ev.wait(), 10)
            operator = Operator(emulator.kubeconfig, workdir, "first", jms.url, a.operator_args)
            await operator.wait_leading(session, 180)

            async def create(name: str) -> float:
                body = {
                    "apiVersion": f"{models.GROUP}/{models.VERSION}",
                    "kind": models.KIND,
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": SPEC,
                }
                async with session.post(emulator.url + STREAMJOBS, json=body) as resp:
                    if resp.status != 201:
                        raise BenchError(f"creating {name}: {resp.status} {await resp.text()}")
                return time.monotonic()

            await create("warmup")
            await stable.until(["warmup"], 120, tasks)
            await asyncio.sleep(2)
            rss_before = common.memory_kb(operator.popen.pid)[0]
            names = [f"sj-{i:04d}" for i in range(a.count)]
            gate = asyncio.Semaphore(a.concurrency)
            created: dict[str, float] = {}

            async def one(name: str) -> None:
                async with gate:
                    sent = time.monotonic()
                    await create(name)
                    created[name] = sent

            cpu0 = common.cpu_seconds(operator.popen.pid) or 0.0
            em0 = common.cpu_seconds(emulator.popen.pid) or 0.0
            emulator.counts()
            other = common.OtherLoad()
            t0 = time.monotonic()
            await asyncio.gather(*(one(n) for n in names))
            create_s = time.monotonic() - t0
            await stable.until(names, a.timeout, tasks)
            converge_s = max(stable.at[n] for n in names) - t0
            cpu1 = common.cpu_seconds(operator.popen.pid) or 0.0
            em1 = common.cpu_seconds(emulator.popen.pid) or 0.0
            converging = emulator.counts()
            others = other.cores((cpu1 - cpu0) + (em1 - em0))
            latencies = [stable.at[n] - created[n] for n in names]
            print(
                f"{a.count:,} StreamJobs created in {create_s:.1f} s; all STABLE"
                f" {converge_s:.1f} s after the first POST"
                f" (p50 {pct(latencies, 0.5):.1f} s, p95 {pct(latencies, 0.95):.1f} s,"
                f" max {max(latencies):.1f} s from each one's creation)"
            )
            print(
                f"  while converging: operator CPU {cpu1 - cpu0:.1f} s"
                f" ({(cpu1 - cpu0) / converge_s:.2f} cores), emulator {em1 - em0:.1f} s,"
                f" this script and everything else on the machine {others:.2f} cores;"
                f" API {rates(converging, converge_s)}"
            )
            # the steady state
            m0 = await operator.metrics(session)
            samples = []
            end = time.monotonic() + a.settle
            while time.monotonic() < end:
                samples.append(common.memory_kb(operator.popen.pid)[0])
                await asyncio.sleep(0.2)
            steady = emulator.counts()
            cpu2 = common.cpu_seconds(operator.popen.pid) or 0.0
            m1 = await operator.metrics(session)
            rss_steady = int(statistics.median(samples))
            peak = common.memory_kb(operator.popen.pid)[1]
            passes = m1.get("streamjob_operator_reconcile_duration_seconds_count", 0) - m0.get(
                "streamjob_operator_reconcile_duration_seconds_count", 0
            )
            print(
                f"  operator RSS: {mb(rss_before)} with 1 StreamJob, {mb(rss_steady)} steady"
                f" with {a.count + 1:,} ({(rss_steady - rss_before) / a.count:.0f} kB each),"
                f" peak {mb(peak)}"
            )
            print(
                f"  steady state ({a.settle:.0f} s): operator {(cpu2 - cpu1) / a.settle:.2f}"
                f" cores, {passes / a.settle:.0f} passes/s; API {rates(steady, a.settle)}"
            )
            # SIGTERM: exit and the Lease
            t = time.monotonic()
            operator.popen.send_signal(signal.SIGTERM)
            try:
                code: int | None = operator.popen.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            exit_s = time.monotonic() - t
            async with session.get(
                f"{emulator.url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE}"
            ) as resp:
                holder = ((await resp.json()).get("spec") or {}).get("holderIdentity")
            log = operator.log_path.read_text(errors="replace")
            print(
                f"  SIGTERM: exited {'with ' + str(code) if code is not None else 'NOT'} in"
                f" {exit_s:.1f} s; Lease holder after: {holder or 'none (handed back)'};"
                f" {log.count('did not exit in time')} kopf handlers left orphaned"
            )
            # the resume
            emulator.counts()
            t = time.monotonic()
            operator = Operator(emulator.kubeconfig, workdir, "second", jms.url, a.operator_args)
            await operator.wait_leading(session, 180)
            leading_s = time.monotonic() - t
            while True:
                m = await operator.metrics(session)
                resumed = m.get('streamjob_operator_reconciles_total{trigger="resume"}', 0)
                if resumed >= a.count + 1:
                    break
                if time.monotonic() - t > a.timeout:
                    raise BenchError(f"only {resumed:.0f} resume passes")
                await asyncio.sleep(0.2)
            resume_s = time.monotonic() - t
            after = emulator.counts()
            writes = {
                k: n
                for k, n in after.items()
                if not k.startswith("GET") and not k.endswith("leases")
            }
            streamjob_writes = sum(n for k, n in writes.items() if "streamjobs" in k)
            print(
                f"  resume: a new operator led {leading_s:.1f} s after it started, and had run"
                f" a resume pass for all {a.count + 1:,} StreamJobs {resume_s:.1f} s after;"
                f" writes meanwhile: {json.dumps(writes) if writes else 'none'}"
                f" ({streamjob_writes} to StreamJobs, kopf's and the timers' included)"
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if operator is not None:
            operator.kill()
        await jms.stop()
        emulator.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1000, help="StreamJobs (default 1,000)")
    p.add_argument("--concurrency", type=int, default=16, help="POSTs in flight")
    p.add_argument("--settle", type=float, default=20.0, help="steady-state window, s")
    p.add_argument("--timeout", type=float, default=600.0, help="to converge, s")
    p.add_argument(
        "--workdir", default=None, type=common.directory, help="keep the logs under this directory"
    )
    p.add_argument(
        "--operator-args",
        type=lambda v: tuple(v.split()),
        default=(),
        help="more arguments for the operator, e.g. '--max-concurrent-passes 32'",
    )
    p.add_argument("--serve-emulator", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_emulator is not None:
        serve_emulator(Path(a.serve_emulator))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="streamjob-operator-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"operator at scale: one operator process, the API emulator in another; {a.count:,}"
        f" StreamJobs to STABLE ({a.concurrency} POSTs in flight); load average"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start",
        flush=True,
    )
    try:
        asyncio.run(main_async(a, workdir))
    except BenchError as e:
        print(f"failed: {e}; logs in {workdir}")
        sys.exit(1)
    print(f"logs in {workdir}")


if __name__ == "__main__":
    main()
