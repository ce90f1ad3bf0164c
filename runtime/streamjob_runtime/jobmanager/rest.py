"""The REST API (aiohttp), modelled on Flink's.  Models: :mod:`streamjob_runtime.api.models`.

Every endpoint needs ``Authorization: Bearer <token>`` when the JobManager has a
REST token (401 without one, 403 with a wrong one); the REST port is HTTPS when
it has TLS.  ``/metrics``, ``/healthz`` and ``/readyz`` are also served, plain and
unauthenticated, on the separate metrics port (:func:`create_metrics_app`) for
Prometheus and probes.

Errors are JSON ``{"error": "..."}``: 400 for an invalid request, 403 for a job
file or a directory outside the allowed roots, 404 for an
unknown job or savepoint request, 409 for a request the job's state does not
allow (a second savepoint, a savepoint of a job that is not running, a trigger id
repeated for another operation).

Savepoint and stop requests may carry a client-chosen ``trigger_id`` (Flink's
``triggerId``): repeated, it answers with the request already started (202, the same
request id) and starts nothing, whatever the job's state is by then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pydantic
from aiohttp import web

from streamjob_runtime import security
from streamjob_runtime.api import models, openapi
from streamjob_runtime.jobmanager import errors, metrics

if TYPE_CHECKING:
    from streamjob_runtime.jobmanager.dispatcher import JobManager
    from streamjob_runtime.jobmanager.jobmaster import JobMaster

JM_KEY: web.AppKey[JobManager] = web.AppKey("jobmanager")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=pydantic.BaseModel)


def _json(model: pydantic.BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    return _json(models.ErrorResponse(error=message), status)


class _NotFound(Exception):
    pass


_ANY_JOBMANAGER = {"/healthz", "/readyz", "/openapi.json", "/metrics", "/"}

WEB_DIR = Path(__file__).parent / "web"
"""The web UI's static files (package data): served without a token, they hold no data."""


def _is_web_ui_file(path: str) -> bool:
    """The UI's static files hold no data: a browser loads them before it has a token."""
    return path == "/" or (path.startswith("/web/") and ".." not in path)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[JM_KEY].security.rest_token
    if expected is None or _is_web_ui_file(request.path):
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        response = error(
            401,
            "this JobManager needs a bearer token: send 'Authorization: Bearer <token>'"
            " (the CLI: --token or STREAMJOB_TOKEN; in Kubernetes the token is in the"
            " Secret <streamjob>-rest-token)",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="streamjob"'
        return response
    if not security.token_matches(given.strip(), expected):
        return error(
            403, "the bearer token is not this JobManager's; check --token or STREAMJOB_TOKEN"
        )
    return await handler(request)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        jm = request.app[JM_KEY]
        if (
            not jm.is_leader
            and request.path not in _ANY_JOBMANAGER
            and not request.path.startswith("/web/")
        ):
            raise errors.NotLeaderError(jm.identity)
        return await handler(request)
    except errors.NotLeaderError as e:
        return error(503, str(e))
    except _NotFound as e:
        return error(404, str(e))
    except errors.ForbiddenError as e:
        return error(403, str(e))
    except errors.SubmissionError as e:
        return error(400, str(e))
    except errors.ConflictError as e:
        return error(409, str(e))
    except web.HTTPException as e:
        if e.status >= 400:
            return error(e.status, e.reason or "request failed")
        raise


async def _body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()
        )
        raise errors.SubmissionError(f"invalid {model.__name__} body: {problems}") from None


def _job(request: web.Request) -> JobMaster:
    job_id = request.match_info["job_id"]
    job = request.app[JM_KEY].jobs.get(job_id)
    if job is None:
        raise _NotFound(f"job {job_id} not found; GET /jobs lists the known jobs")
    return job


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the leader, serving; or a standby ready to take over (HA). Not ready: a
    standby still withdrawing, a leader still recovering its jobs, one that lost its
    leadership. The body names the role; with HA a Service routes to the leader by
    the label the leader puts on its pod, not by readiness, so a Deployment of a
    leader and standbys becomes fully available."""
    jm = request.app[JM_KEY]
    if jm.is_leader:
        return web.json_response({"status": "ready", "role": "leader"})
    if jm.standby_ready:
        return web.json_response({"status": "ready", "role": "standby"})
    return error(503, f"JobManager {jm.identity} is neither leading nor a ready standby")


async def overview(request: web.Request) -> web.Response:
    return _json(request.app[JM_KEY].overview())


async def list_jobs(request: web.Request) -> web.Response:
    jm = request.app[JM_KEY]
    return _json(models.JobList(jobs=[j.overview() for j in jm.jobs.values()]))


async def submit_job(request: web.Request) -> web.Response:
    submission = await _body(request, models.JobSubmission)
    job_id = await request.app[JM_KEY].submit(submission)
    return _json(models.JobSubmitted(jobid=job_id), 202)


async def job_details(request: web.Request) -> web.Response:
    return _json(_job(request).details())


async def job_checkpoints(request: web.Request) -> web.Response:
    return _json(_job(request).checkpoint_statistics())


async def job_exceptions(request: web.Request) -> web.Response:
    return _json(_job(request).exception_history())


async def patch_job(request: web.Request) -> web.Response:
    job = _job(request)
    mode = request.query.get("mode", "cancel")
    if mode != "cancel":
        raise errors.SubmissionError(f"unknown mode {mode!r}; use PATCH /jobs/<id>?mode=cancel")
    if job.state.terminal:
        raise errors.ConflictError(f"job {job.job_id} already ended ({job.state.value})")
    await job.cancel()
    return web.json_response({}, status=202)


async def trigger_savepoint(request: web.Request) -> web.Response:
    job = _job(request)
    body = await _body(request, models.SavepointTriggerRequest)
    directory = request.app[JM_KEY].savepoint_directory(job.job_id, body.target_directory)
    trigger = job.trigger_savepoint(directory, cancel=body.cancel_job, request_id=body.trigger_id)
    return _json(models.TriggerResponse(request_id=trigger.request_id), 202)


async def savepoint_status(request: web.Request) -> web.Response:
    """A request this leader runs, else one a previous leader finished and recorded in
    the HA metadata (the job may have ended since)."""
    jm = request.app[JM_KEY]
    job_id, request_id = request.match_info["job_id"], request.match_info["request_id"]
    job = jm.jobs.get(job_id)
    trigger = None if job is None else job.savepoints.get(request_id)
    if trigger is not None:
        return _json(trigger.info())
    recorded = await jm.recorded_trigger(job_id, request_id)
    if recorded is not None:
        return _json(recorded)
    if job is None:
        raise _NotFound(f"job {job_id} not found; GET /jobs lists the known jobs")
    raise _NotFound(f"job {job_id} has no savepoint request {request_id}")


async def stop_job(request: web.Request) -> web.Response:
    job = _job(request)
    body = await _body(request, models.StopRequest)
    directory = request.app[JM_KEY].savepoint_directory(job.job_id, body.target_directory)
    trigger = job.trigger_savepoint(
        directory, stop=True, drain=body.drain, request_id=body.trigger_id
    )
    return _json(models.TriggerResponse(request_id=trigger.request_id), 202)


async def prometheus(request: web.Request) -> web.Response:
    return web.Response(
        body=metrics.exposition(request.app[JM_KEY]),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def taskmanagers(request: web.Request) -> web.Response:
    return _json(request.app[JM_KEY].taskmanagers())


async def job_config(request: web.Request) -> web.Response:
    return _json(_job(request).job_config())


async def list_savepoints(request: web.Request) -> web.Response:
    return _json(_job(request).savepoint_requests())


async def web_index(request: web.Request) -> web.FileResponse:
    """The web UI.  Its own URLs are relative, so it works under any path prefix."""
    return web.FileResponse(
        WEB_DIR / "index.html",
        headers={
            "Cache-Control": "no-cache",
            # Only its own script and requests: no inline script, nothing from elsewhere.
            "Content-Security-Policy": (
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
                " img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'"
            ),
            "X-Content-Type-Options": "nosniff",
        },
    )


async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


def create_metrics_app(jm: JobManager) -> web.Application:
    """The plain, unauthenticated metrics port: ``/metrics``, ``/healthz``, ``/readyz``."""
    app = web.Application(middlewares=[errors_middleware])
    app[JM_KEY] = jm
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


def create_app(jm: JobManager) -> web.Application:
    app = web.Application(middlewares=[auth_middleware, errors_middleware])
    app[JM_KEY] = jm
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/overview", overview)
    r.add_get("/metrics", prometheus)
    r.add_get("/openapi.json", openapi_document)
    r.add_get("/", web_index)
    r.add_static("/web/", WEB_DIR, append_version=False)
    r.add_get("/taskmanagers", taskmanagers)
    r.add_get("/jobs", list_jobs)
    r.add_post("/jobs", submit_job)
    r.add_get("/jobs/{job_id}", job_details)
    r.add_patch("/jobs/{job_id}", patch_job)
    r.add_get("/jobs/{job_id}/checkpoints", job_checkpoints)
    r.add_get("/jobs/{job_id}/exceptions", job_exceptions)
    r.add_get("/jobs/{job_id}/config", job_config)
    r.add_get("/jobs/{job_id}/savepoints", list_savepoints)
    r.add_post("/jobs/{job_id}/savepoints", trigger_savepoint)
    r.add_get("/jobs/{job_id}/savepoints/{request_id}", savepoint_status)
    r.add_post("/jobs/{job_id}/stop", stop_job)
    return app
