"""Observing: Deployments and HA metadata from the Kubernetes emulator, the JobManager over REST.

The JobManager is a small fake (:class:`FakeJobManager`, an aiohttp server speaking the
runtime's REST models; other operator tests use it too) or, where the REST contract
itself is the point, the runtime's real JobManager (``LocalCluster``).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from streamjob_operator.api import crd, models
from streamjob_operator.desired import jobmanager, metadata, target
from streamjob_operator.observing import children, kubeapi, observer, resource
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.planning import changes, observed
from streamjob_runtime.api import models as rest
from streamjob_runtime.ha import services
from tests.conftest import JOBS, Harness
from tests.kube import KubeEmulator, fixtures

kube = fixtures.kube

NAMESPACE = "default"
DeploymentState = observed.DeploymentState

SPEC: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount"},
    "savepoints": {"directory": "/savepoints"},
}


# -- a fake JobManager ----------------------------------------------------------------------


class FakeJobManager:
    """The JobManager's REST API over jobs held in memory, on its own thread and loop.

    Submitted jobs run at once; a savepoint completes when it is asked about (a stop then
    finishes the job) unless ``hold_savepoints``, as a directory under ``savepoint_root``
    when that is set; ``available = False`` answers 503 (a
    standby). ``requests`` logs "METHOD path" of every call. A savepoint or stop request
    with a ``trigger_id`` the fake knows answers with that request and starts nothing (as
    the runtime); ``ignore_trigger_ids`` makes it choose its own ids instead.
    ``ssl_context``: serve HTTPS with it; ``token``: answer 401 to a request without
    ``Authorization: Bearer <token>`` (``authorizations`` logs what each request sent).
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, token: str | None = None) -> None:
        self.ssl_context = ssl_context
        self.token = token
        self.authorizations: list[str | None] = []
        self.peers: list[object] = []  # the client address of each request's connection
        self.jobs: dict[str, rest.JobOverview] = {}
        self.checkpoints: dict[str, int] = {}
        self._triggered: dict[tuple[str, int], int] = {}
        self.savepoints: dict[str, tuple[str, bool, rest.SavepointInfo]] = {}
        self.submissions: list[rest.JobSubmission] = []
        self.requests: list[str] = []
        self.available = True
        self.hold_savepoints = False
        self.ignore_trigger_ids = False
        self.savepoint_root: Path | None = None  # set: completed savepoints are written there
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def resolve(self, service_url: str) -> str:
        return self.url

    def __enter__(self) -> FakeJobManager:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        self._routes(app.router)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context
        ).start()

    def _routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/jobs", self._list)
        r.add_post("/jobs", self._submit)
        r.add_get("/jobs/{jid}", self._details)
        r.add_patch("/jobs/{jid}", self._cancel)
        r.add_get("/jobs/{jid}/checkpoints", self._checkpoints)
        r.add_post("/jobs/{jid}/savepoints", self._trigger)
        r.add_post("/jobs/{jid}/stop", self._stop)
        r.add_get("/jobs/{jid}/savepoints/{rid}", self._savepoint)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        self.authorizations.append(request.headers.get("Authorization"))
        transport = request.transport
        self.peers.append(None if transport is None else transport.get_extra_info("peername"))
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _error(401, "a bearer token is required")
        if not self.available:
            return _error(503, "not the leader")
        with self._lock:
            response: web.StreamResponse = await handler(request)
        return response

    def add_job(self, state: rest.JobStatus = rest.JobStatus.RUNNING, restarts: int = 0) -> str:
        jid = f"job{next(self._ids)}"
        self.jobs[jid] = rest.JobOverview(
            jid=jid, name="wordcount", state=state, start_time=1_000, restarts=restarts
        )
        self.checkpoints[jid] = 0
        return jid

    def _job(self, request: web.Request) -> rest.JobOverview:
        job = self.jobs.get(request.match_info["jid"])
        if job is None:
            raise web.HTTPNotFound()
        return job

    async def _list(self, request: web.Request) -> web.Response:
        return _json(rest.JobList(jobs=list(self.jobs.values())))

    async def _submit(self, request: web.Request) -> web.Response:
        submission = rest.JobSubmission.model_validate_json(await request.read())
        self.submissions.append(submission)
        return _json(rest.JobSubmitted(jobid=self.add_job()), 202)

    async def _details(self, request: web.Request) -> web.Response:
        try:
            job = self._job(request)
        except web.HTTPNotFound:
            return _error(404, "no such job")
        details = rest.JobDetails(
            jid=job.jid,
            name=job.name,
            state=job.state,
            start_time=job.start_time,
            end_time=None,
            duration_ms=0,
            restarts=job.restarts,
            attempt=1,
            restored_from=None,
            failure_cause=None,
            vertices=[],
        )
        return _json(details)

    async def _cancel(self, request: web.Request) -> web.Response:
        try:
            job = self._job(request)
        except web.HTTPNotFound:
            return _error(404, "no such job")
        if job.state.terminal:
            return _error(409, "already ended")
        self.jobs[job.jid] = job.model_copy(update={"state": rest.JobStatus.CANCELED})
        return web.json_response({}, status=202)

    async def _checkpoints(self, request: web.Request) -> web.Response:
        try:
            job = self._job(request)
        except web.HTTPNotFound:
            return _error(404, "no such job")
        n = self.checkpoints[job.jid]
        latest = None
        if n:
            # a checkpoint's trigger time is when it was first reported, as it stays in
            # a JobManager's answers
            triggered = self._triggered.setdefault((job.jid, n), int(time.time() * 1000))
            latest = rest.CompletedCheckpointInfo(
                id=n,
                path=f"/checkpoints/{job.jid}/chk-{n}",
                trigger_timestamp=triggered,
                duration_ms=1.0,
                bytes=1,
                alignment_ms=0.0,
            )
        counts = rest.CheckpointCounts(completed=n, failed=0, in_progress=0)
        return _json(
            rest.CheckpointingStatistics(counts=counts, latest_completed=latest, history=[])
        )

    async def _begin(self, request: web.Request, stop: bool) -> web.Response:
        try:
            job = self._job(request)
        except web.HTTPNotFound:
            return _error(404, "no such job")
        body = await request.read()
        model = rest.StopRequest if stop else rest.SavepointTriggerRequest
        trigger_id = model.model_validate_json(body or b"{}").trigger_id
        if self.ignore_trigger_ids:
            trigger_id = None
        if trigger_id in self.savepoints:
            return _json(rest.TriggerResponse(request_id=trigger_id), 202)
        if job.state is not rest.JobStatus.RUNNING:
            return _error(409, "not running")
        rid = trigger_id or f"req{next(self._ids)}"
        info = rest.SavepointInfo(request_id=rid, status=rest.SavepointStatus.IN_PROGRESS)
        self.savepoints[rid] = (job.jid, stop, info)
        return _json(rest.TriggerResponse(request_id=rid), 202)

    async def _trigger(self, request: web.Request) -> web.Response:
        return await self._begin(request, stop=False)

    async def _stop(self, request: web.Request) -> web.Response:
        return await self._begin(request, stop=True)

    async def _savepoint(self, request: web.Request) -> web.Response:
        found = self.savepoints.get(request.match_info["rid"])
        if found is None or found[0] != request.match_info["jid"]:
            return _error(404, "no such request")
        jid, stop, info = found
        if info.status is rest.SavepointStatus.IN_PROGRESS and not self.hold_savepoints:
            location = f"/savepoints/savepoint-{info.request_id}"
            if self.savepoint_root is not None:
                directory = self.savepoint_root / f"savepoint-{info.request_id}"
                directory.mkdir(parents=True)
                (directory / "_metadata").write_bytes(b"{}")
                location = str(directory)
            info = rest.SavepointInfo(
                request_id=info.request_id,
                status=rest.SavepointStatus.COMPLETED,
                location=location,
            )
            self.savepoints[info.request_id] = (jid, stop, info)
            if stop:
                self.jobs[jid] = self.jobs[jid].model_copy(
                    update={"state": rest.JobStatus.FINISHED}
                )
        return _json(info)


def _json(model: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json(rest.ErrorResponse(error=message), status)


@pytest.fixture
def fake_jobmanager() -> Iterator[FakeJobManager]:
    with FakeJobManager() as jm:
        yield jm


# -- emulator helpers -----------------------------------------------------------------------


def streamjob_body(name: str = "wordcount", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{models.GROUP}/{models.VERSION}",
        "kind": models.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec or SPEC,
    }


def install_crd(kube: KubeEmulator) -> None:
    kube.apply_crd(crd.build())


def deployed_status(spec: dict[str, Any] | None = None, **job: Any) -> dict[str, Any]:
    """A status whose deployed spec is ``spec`` (as after a first deployment)."""
    parsed = models.StreamJobSpec.model_validate(spec or SPEC)
    status = models.StreamJobStatus(
        reconciliation=models.Reconciliation(
            lastReconciledSpec=changes.encode(parsed), state=models.ReconciliationState.DEPLOYED
        ),
        job=models.JobInfo(**job),
    )
    return status.model_dump(mode="json")


def create_streamjob(
    kube: KubeEmulator, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    install_crd(kube)
    created = kube.create(streamjob_body(spec=spec))
    if status is not None:
        created = kube.patch(
            f"{models.GROUP}/{models.VERSION}",
            models.PLURAL,
            created["metadata"]["name"],
            {"status": status},
            namespace=NAMESPACE,
            subresource="status",
        )
    return created


def deployment_manifest(
    name: str, component: metadata.Component, replicas: int = 1
) -> dict[str, Any]:
    labels = {"app": name, "component": component.value}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-{component.value}", "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "streamjob:1"}]},
            },
        },
    }


def mark_ready(kube: KubeEmulator, name: str, ready: int | None = None) -> None:
    """Play the Deployment controller: every replica (or ``ready``) ready and updated."""
    stored = kube.get("apps/v1", "deployments", name, namespace=NAMESPACE)
    assert stored is not None, f"no Deployment {name}"
    replicas = stored["spec"]["replicas"]
    count = replicas if ready is None else ready
    stored["status"] = {
        "observedGeneration": stored["metadata"]["generation"],
        "replicas": replicas,
        "readyReplicas": count,
        "updatedReplicas": replicas,
        "availableReplicas": count,
    }
    kube.put_object(stored)


def read_resource(kube: KubeEmulator, name: str = "wordcount") -> resource.StreamJobResource:
    body = kube.get(f"{models.GROUP}/{models.VERSION}", models.PLURAL, name, namespace=NAMESPACE)
    assert body is not None
    return resource.from_body(body)


def run_observe(kube: KubeEmulator, streamjob: resource.StreamJobResource, **kw: Any) -> Any:
    async def main() -> observed.Observed:
        async with fixtures.api_client(kube) as api:
            return await observer.observe(api, streamjob, **kw)

    return asyncio.run(main())


# -- Deployments ----------------------------------------------------------------------------


def test_a_deployment_is_ready_only_when_every_replica_of_its_generation_is() -> None:
    def dep(generation: int = 2, **status: Any) -> dict[str, Any]:
        return {
            "metadata": {"generation": generation},
            "spec": {"replicas": 2},
            "status": status,
        }

    assert children.deployment_state(None) is DeploymentState.ABSENT
    assert children.deployment_state(dep()) is DeploymentState.PROGRESSING
    assert children.deployment_state(dep(readyReplicas=1)) is DeploymentState.PROGRESSING
    full = {"readyReplicas": 2, "updatedReplicas": 2}
    assert children.deployment_state(dep(**full)) is DeploymentState.READY
    stale = dep(observedGeneration=1, **full)
    assert children.deployment_state(stale) is DeploymentState.PROGRESSING
    old_pods = dep(observedGeneration=2, readyReplicas=2, updatedReplicas=1)
    assert children.deployment_state(old_pods) is DeploymentState.PROGRESSING
    deleting = dep(**full)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert children.deployment_state(deleting) is DeploymentState.PROGRESSING


def test_observing_reads_the_deployments_and_finds_no_jobmanager_without_one(
    kube: KubeEmulator,
) -> None:
    create_streamjob(kube, status=deployed_status())
    jm = metadata.Component.JOBMANAGER
    kube.create(deployment_manifest("wordcount", jm))
    mark_ready(kube, "wordcount-jobmanager")
    requests_before = len(kube.requests)
    seen = run_observe(kube, read_resource(kube))
    assert seen.jobmanager is DeploymentState.READY
    assert seen.taskmanager is DeploymentState.ABSENT
    assert not seen.rest_reachable  # the Service's name does not resolve here
    writes = [r for r in kube.requests[requests_before:] if r.method != "GET"]
    assert writes == [], "observing never mutates"


def test_no_jobmanager_deployment_means_no_rest_call(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    create_streamjob(kube, status=deployed_status())
    seen = run_observe(kube, read_resource(kube), resolve=fake_jobmanager.resolve)
    assert seen.deployments_absent
    assert not seen.rest_reachable
    assert fake_jobmanager.requests == []


def test_a_jobmanager_without_a_ready_pod_is_not_asked_until_one_is_ready(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    jid = fake_jobmanager.add_job()
    create_streamjob(kube, status=deployed_status(id=jid))
    kube.create(deployment_manifest("wordcount", metadata.Component.JOBMANAGER))
    asked: list[str] = []

    def resolve(url: str) -> str:
        asked.append(url)
        return fake_jobmanager.url

    mark_ready(kube, "wordcount-jobmanager", ready=0)  # the pod is not ready yet
    seen = run_observe(kube, read_resource(kube), resolve=resolve)
    assert seen.jobmanager is DeploymentState.PROGRESSING
    assert not seen.rest_reachable
    assert asked == []
    assert fake_jobmanager.requests == []

    mark_ready(kube, "wordcount-jobmanager", ready=1)
    seen = run_observe(kube, read_resource(kube), resolve=resolve)
    assert asked == ["https://wordcount-jobmanager.default.svc:8081"]
    assert seen.rest_reachable
    assert seen.job is not None
    assert seen.job.jid == jid


# -- the JobManager -------------------------------------------------------------------------


def with_jobmanager(kube: KubeEmulator, status: dict[str, Any]) -> resource.StreamJobResource:
    create_streamjob(kube, status=status)
    kube.create(deployment_manifest("wordcount", metadata.Component.JOBMANAGER))
    mark_ready(kube, "wordcount-jobmanager")
    return read_resource(kube)


def test_the_jobmanager_is_asked_at_the_address_its_service_implies(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    jid = fake_jobmanager.add_job(restarts=2)
    fake_jobmanager.checkpoints[jid] = 3
    asked: list[str] = []

    def resolve(url: str) -> str:
        asked.append(url)
        return fake_jobmanager.url

    seen = run_observe(kube, with_jobmanager(kube, deployed_status(id=jid)), resolve=resolve)
    job = target.StreamJob("wordcount", NAMESPACE, "uid", models.StreamJobSpec.model_validate(SPEC))
    assert asked == [jobmanager.rest_url(job, target.DeploymentTarget())]
    assert asked == ["https://wordcount-jobmanager.default.svc:8081"]
    assert seen.rest_reachable
    assert [j.jid for j in seen.jobs] == [jid]
    assert seen.job is not None
    assert seen.job.restarts == 2
    assert seen.checkpoints is not None
    assert seen.checkpoints.latest_completed is not None
    assert seen.checkpoints.latest_completed.id == 3
    assert seen.job_running


def test_a_job_the_jobmanager_does_not_know_is_observed_as_none_while_reachable(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    streamjob = with_jobmanager(kube, deployed_status(id="gone"))
    seen = run_observe(kube, streamjob, resolve=fake_jobmanager.resolve)
    assert seen.rest_reachable
    assert seen.job is None
    assert seen.checkpoints is None


def test_the_pending_savepoint_request_is_asked_about(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    jid = fake_jobmanager.add_job()
    fake_jobmanager.hold_savepoints = True
    info = rest.SavepointInfo(request_id="req9", status=rest.SavepointStatus.IN_PROGRESS)
    fake_jobmanager.savepoints["req9"] = (jid, False, info)
    status = deployed_status(id=jid)
    status["pendingSavepoint"] = {
        "triggerId": "req9",
        "triggerType": "manual",
        "triggerTime": "2026-01-01T00:00:00Z",
        "jobId": jid,
    }
    seen = run_observe(kube, with_jobmanager(kube, status), resolve=fake_jobmanager.resolve)
    assert seen.savepoint is not None
    assert seen.savepoint.status is rest.SavepointStatus.IN_PROGRESS
    assert f"GET /jobs/{jid}/savepoints/req9" in fake_jobmanager.requests
    status["pendingSavepoint"]["triggerId"] = "unknown"
    kube.patch(
        f"{models.GROUP}/{models.VERSION}",
        models.PLURAL,
        "wordcount",
        {"status": status},
        namespace=NAMESPACE,
        subresource="status",
    )
    seen = run_observe(kube, read_resource(kube), resolve=fake_jobmanager.resolve)
    assert seen.rest_reachable
    assert seen.savepoint is None


def test_observations_sharing_a_session_reuse_its_connection_with_each_ones_token(
    fake_jobmanager: FakeJobManager,
) -> None:
    """The operator's passes share one REST session (``jobmanager.session``): a second
    observation of a JobManager goes over the first's connection (no new one, and no SSL
    context for a plain-HTTP URL), each with its own credentials' token."""
    jid = fake_jobmanager.add_job()

    async def observe_twice() -> list[rest_observing.RestObservation]:
        async with rest_observing.session() as shared:
            return [
                await rest_observing.observe(
                    fake_jobmanager.url,
                    jid,
                    None,
                    credentials=rest_observing.Credentials(token=token, ca=b"not a CA"),
                    shared=shared,
                )
                for token in ("first", "second")
            ]

    first, second = asyncio.run(observe_twice())
    assert first.reachable, first.error
    assert second.reachable, second.error
    assert second.job is not None
    assert second.job.jid == jid
    assert len(fake_jobmanager.peers) == 6  # jobs, the job, its checkpoints; twice
    assert len(set(fake_jobmanager.peers)) == 1, fake_jobmanager.peers
    assert fake_jobmanager.authorizations == 3 * ["Bearer first"] + 3 * ["Bearer second"]


@pytest.mark.parametrize("failure", ["refused", "standby", "garbage"])
def test_an_unreachable_jobmanager_is_observed_as_such_and_never_raises(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager, failure: str
) -> None:
    jid = fake_jobmanager.add_job()
    streamjob = with_jobmanager(kube, deployed_status(id=jid))
    if failure == "refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        seen = run_observe(kube, streamjob, resolve=lambda url: closed)
    elif failure == "standby":
        fake_jobmanager.available = False
        seen = run_observe(kube, streamjob, resolve=fake_jobmanager.resolve)
    else:
        # the emulator speaks HTTP, but not the JobManager's API
        seen = run_observe(kube, streamjob, resolve=lambda url: f"{kube.url}/version")
    assert not seen.rest_reachable
    assert seen.jobs == ()
    assert seen.job is None


def test_a_jobmanager_failing_midway_leaves_no_half_observation(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    jid = fake_jobmanager.add_job()

    async def main() -> rest_observing.RestObservation:
        # /jobs answers, then the server goes: the job must not read as unknown
        original = fake_jobmanager.jobs

        class Vanishing(dict[str, rest.JobOverview]):
            def get(self, key: Any, default: Any = None) -> Any:
                fake_jobmanager.available = False
                return super().get(key, default)

        fake_jobmanager.jobs = Vanishing(original)
        return await rest_observing.observe(fake_jobmanager.url, jid, None)

    result = asyncio.run(main())
    assert not result.reachable
    assert result.job is None
    assert result.error is not None


# -- HA metadata ----------------------------------------------------------------------------


def test_the_ha_checkpoint_pointer_is_read_in_the_runtimes_format(kube: KubeEmulator) -> None:
    record = services.CheckpointRecord(
        next_checkpoint_id=8,
        retained=(
            services.CheckpointPointer(5, "/checkpoints/j1/chk-5"),
            services.CheckpointPointer(6, "/savepoints/sp-6", kind="savepoint"),
            services.CheckpointPointer(7, "/checkpoints/j1/chk-7"),
        ),
    )
    spec = {**SPEC, "highAvailability": {"enabled": True}}
    streamjob = with_jobmanager(kube, deployed_status(spec, id="j1"))
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "streamjob-wordcount-ha", "namespace": NAMESPACE},
            "data": {"checkpoints.j1": msgspec.json.encode(record).decode()},
        }
    )
    seen = run_observe(kube, streamjob)
    assert seen.ha_checkpoint == observed.HaCheckpoint(7, "/checkpoints/j1/chk-7")
    assert children.latest_checkpoint({"checkpoints.j1": "not json"}, "j1") is None
    assert children.latest_checkpoint({}, "j1") is None


def test_the_ha_metadata_is_not_read_without_ha(kube: KubeEmulator) -> None:
    streamjob = with_jobmanager(kube, deployed_status(id="j1"))
    before = len(kube.requests)
    seen = run_observe(kube, streamjob)
    assert seen.ha_checkpoint is None
    assert not any("configmaps" in r.path for r in kube.requests[before:])


# -- the StreamJob itself -------------------------------------------------------------------


def test_an_unreadable_status_is_refused_rather_than_guessed(kube: KubeEmulator) -> None:
    """A status the API server stored under another schema (an older CRD: today's refuses
    this status) and that the models cannot read."""
    older = crd.build()
    schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["status"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    kube.apply_crd(older)
    kube.create(streamjob_body())
    kube.patch(
        f"{models.GROUP}/{models.VERSION}",
        models.PLURAL,
        "wordcount",
        {"status": {"savepointHistory": "not a list"}},
        namespace=NAMESPACE,
        subresource="status",
    )
    install_crd(kube)  # the stored object is not checked again on read
    with pytest.raises(resource.StatusUnreadable, match="cannot be read"):
        read_resource(kube)


def test_a_streamjob_that_is_gone_reads_as_none(kube: KubeEmulator) -> None:
    install_crd(kube)

    async def main() -> resource.StreamJobResource | None:
        async with fixtures.api_client(kube) as api:
            return await resource.read(api, NAMESPACE, "nothing")

    assert asyncio.run(main()) is None


def test_kubeapi_paths() -> None:
    assert kubeapi.path("v1", "services", "ns", "a") == "/api/v1/namespaces/ns/services/a"
    assert (
        kubeapi.path("streamjob.dev/v1alpha1", "streamjobs", "ns", "a", "status")
        == "/apis/streamjob.dev/v1alpha1/namespaces/ns/streamjobs/a/status"
    )


# -- the real JobManager ----------------------------------------------------------------------


def test_a_real_jobmanagers_job_and_checkpoints_are_observed(
    kube: KubeEmulator, cluster_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Without TLS and token: this observes as the operator does before it reads the
    # job's certificates and token from the Secrets it owns.
    cluster = cluster_factory(taskmanagers=1, slots=2, insecure=True)
    out = tmp_path / "out"
    jid = cluster.submit(
        str(JOBS / "keyed_sum.py"),
        [f"out={out}", "events=100000000", "keys=4", "rate=2000", "interval=200"],
        parallelism=1,
    )
    cluster.wait_for("a checkpoint", lambda: cluster.checkpoints(jid).counts.completed >= 1)
    streamjob = with_jobmanager(kube, deployed_status(id=jid))
    seen = run_observe(kube, streamjob, resolve=lambda url: cluster.cluster.rest_url)
    assert seen.rest_reachable
    assert seen.job_running
    assert [j.jid for j in seen.jobs] == [jid]
    assert seen.checkpoints is not None
    assert seen.checkpoints.latest_completed is not None
    assert seen.checkpoints.latest_completed.path
    cluster.cancel(jid)


def test_a_jobmanager_url_template_maps_service_urls_and_refuses_unknown_fields() -> None:
    through_proxy = rest_observing.url_template(rest_observing.KUBECTL_PROXY_TEMPLATE)
    job = target.StreamJob("sum", "prod", "u", models.StreamJobSpec.model_validate(SPEC))
    url = jobmanager.rest_url(job, target.DeploymentTarget())
    assert url == "https://sum-jobmanager.prod.svc:8081"
    assert through_proxy(url) == (
        "http://127.0.0.1:8001/api/v1/namespaces/prod/services/https:sum-jobmanager:8081/proxy"
    )
    assert through_proxy(url + "/jobs?x=1") == (
        "http://127.0.0.1:8001/api/v1/namespaces/prod/services/https:sum-jobmanager:8081/proxy"
        "/jobs?x=1"
    )
    assert through_proxy("http://10.0.0.7:8081") == "http://10.0.0.7:8081"  # not a Service's
    dns = rest_observing.url_template("http://{service}.{namespace}.svc.cluster.local:{port}/")
    assert dns(url) == "http://sum-jobmanager.prod.svc.cluster.local:8081"
    with pytest.raises(ValueError, match=r"names name: it may name only \{service\}"):
        rest_observing.url_template("http://{name}:{port}")
    with pytest.raises(ValueError, match="is not an http:// or https:// URL"):
        rest_observing.url_template("{service}:{port}")
    with pytest.raises(ValueError, match="is malformed"):
        rest_observing.url_template("http://{service")
