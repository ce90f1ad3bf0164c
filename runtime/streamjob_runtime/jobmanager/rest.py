"""The REST API (aiohttp), modelled on Flink's.  Models: :mod:`streamjob_runtime.api.models`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pydantic
from aiohttp import web

from streamjob_runtime.api import models

if TYPE_CHECKING:
    from streamjob_runtime.jobmanager.dispatcher import JobManager
    from streamjob_runtime.jobmanager.jobmaster import JobMaster

JM_KEY: web.AppKey[JobManager] = web.AppKey("jobmanager")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(model: pydantic.BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    return _json(models.ErrorResponse(error=message), status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400:
            return error(e.status, e.reason or "request failed")
        raise
    except pydantic.ValidationError as e:
        return error(400, f"invalid request body: {e.errors(include_url=False)}")


def _job(request: web.Request) -> JobMaster:
    jm = request.app[JM_KEY]
    job_id = request.match_info["job_id"]
    job = jm.jobs.get(job_id)
    if job is None:
        raise web.HTTPNotFound(reason=f"job {job_id} not found; GET /jobs lists the known jobs")
    return job


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


async def overview(request: web.Request) -> web.Response:
    return _json(request.app[JM_KEY].overview())


async def list_jobs(request: web.Request) -> web.Response:
    jm = request.app[JM_KEY]
    return _json(models.JobList(jobs=[j.overview() for j in jm.jobs.values()]))


async def submit_job(request: web.Request) -> web.Response:
    from streamjob_runtime.jobmanager.dispatcher import SubmissionError

    try:
        body = await request.read()
        submission = models.JobSubmission.model_validate_json(body)
    except pydantic.ValidationError as e:
        return error(400, f"invalid job submission: {e.errors(include_url=False)}")
    try:
        job_id = await request.app[JM_KEY].submit(submission)
    except SubmissionError as e:
        return error(400, str(e))
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
        return error(400, f"unknown mode {mode!r}; use PATCH /jobs/<id>?mode=cancel")
    await job.cancel()
    return web.json_response({}, status=202)


def create_app(jm: JobManager) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[JM_KEY] = jm
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/overview", overview)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_post("/jobs", submit_job)
    app.router.add_get("/jobs/{job_id}", job_details)
    app.router.add_patch("/jobs/{job_id}", patch_job)
    app.router.add_get("/jobs/{job_id}/checkpoints", job_checkpoints)
    app.router.add_get("/jobs/{job_id}/exceptions", job_exceptions)
    return app
