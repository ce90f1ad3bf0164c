"""Typed REST client for the JobManager (used by the CLI, tests and the operator).

A JobManager serves REST over HTTPS with its job's certificate and wants a bearer
token: give the client ``token`` and either ``ssl`` (an :class:`ssl.SSLContext`
that trusts the job's CA) or ``ca_file`` (that CA, PEM).  With neither, an
``https://`` URL is verified against the system's trusted CAs.

A client makes its own session (closed with it) unless given one: a caller that makes
many short-lived clients (the operator, one per pass) shares one session, whose pooled
connections to the same address are then reused; the token, timeout and SSL context go
with each request, and closing the client leaves that session open.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import pydantic

from streamjob_runtime.api import models

M = TypeVar("M", bound=pydantic.BaseModel)


class RestError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class JobManagerClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        ca_file: str | Path | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if ssl is None and ca_file is not None:
            ssl = ssl_module.create_default_context(cafile=str(ca_file))
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self._owns_session = session is None
        self._session = session if session is not None else aiohttp.ClientSession()

    def _request(
        self, method: str, path: str, data: str | None = None, content_type: str | None = None
    ) -> aiohttp.client._RequestContextManager:
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return self._session.request(
            method,
            self.base_url + path,
            data=data,
            headers=headers,
            timeout=self._timeout,
            ssl=self._ssl,
        )

    async def __aenter__(self) -> JobManagerClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session:
            await self._session.close()

    async def _call(
        self, method: str, path: str, model: type[M] | None, body: pydantic.BaseModel | None = None
    ) -> M | None:
        data = body.model_dump_json() if body is not None else None
        content_type = "application/json" if data is not None else None
        async with self._request(method, path, data, content_type) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = models.ErrorResponse.model_validate_json(text).error
                except pydantic.ValidationError:
                    message = text
                raise RestError(resp.status, message)
            return None if model is None else model.model_validate_json(text)

    async def _get(self, path: str, model: type[M]) -> M:
        result = await self._call("GET", path, model)
        assert result is not None
        return result

    async def overview(self) -> models.ClusterOverview:
        return await self._get("/overview", models.ClusterOverview)

    async def taskmanagers(self) -> models.TaskManagerList:
        return await self._get("/taskmanagers", models.TaskManagerList)

    async def list_jobs(self) -> models.JobList:
        return await self._get("/jobs", models.JobList)

    async def submit(self, submission: models.JobSubmission) -> str:
        result = await self._call("POST", "/jobs", models.JobSubmitted, submission)
        assert result is not None
        return result.jobid

    async def job(self, job_id: str) -> models.JobDetails:
        return await self._get(f"/jobs/{job_id}", models.JobDetails)

    async def checkpoints(self, job_id: str) -> models.CheckpointingStatistics:
        return await self._get(f"/jobs/{job_id}/checkpoints", models.CheckpointingStatistics)

    async def exceptions(self, job_id: str) -> models.JobExceptions:
        return await self._get(f"/jobs/{job_id}/exceptions", models.JobExceptions)

    async def job_config(self, job_id: str) -> models.JobConfigInfo:
        return await self._get(f"/jobs/{job_id}/config", models.JobConfigInfo)

    async def savepoints(self, job_id: str) -> models.SavepointRequestList:
        return await self._get(f"/jobs/{job_id}/savepoints", models.SavepointRequestList)

    async def cancel(self, job_id: str) -> None:
        await self._call("PATCH", f"/jobs/{job_id}?mode=cancel", None)

    async def trigger_savepoint(
        self,
        job_id: str,
        target_directory: str | None = None,
        cancel_job: bool = False,
        trigger_id: str | None = None,
    ) -> str:
        """Start a savepoint; returns its request id (``trigger_id`` when given: sending
        the same id again returns the same request instead of starting another)."""
        body = models.SavepointTriggerRequest(
            target_directory=target_directory, cancel_job=cancel_job, trigger_id=trigger_id
        )
        result = await self._call(
            "POST", f"/jobs/{job_id}/savepoints", models.TriggerResponse, body
        )
        assert result is not None
        return result.request_id

    async def savepoint_status(self, job_id: str, request_id: str) -> models.SavepointInfo:
        return await self._get(f"/jobs/{job_id}/savepoints/{request_id}", models.SavepointInfo)

    async def stop(
        self,
        job_id: str,
        target_directory: str | None = None,
        drain: bool = False,
        trigger_id: str | None = None,
    ) -> str:
        """Stop with a savepoint; returns its request id (``trigger_id`` as for
        :meth:`trigger_savepoint`)."""
        body = models.StopRequest(
            target_directory=target_directory, drain=drain, trigger_id=trigger_id
        )
        result = await self._call("POST", f"/jobs/{job_id}/stop", models.TriggerResponse, body)
        assert result is not None
        return result.request_id

    async def wait_savepoint(
        self, job_id: str, request_id: str, poll_s: float = 0.1
    ) -> models.SavepointInfo:
        """Poll until the savepoint completed or failed."""
        while True:
            info = await self.savepoint_status(job_id, request_id)
            if info.status is not models.SavepointStatus.IN_PROGRESS:
                return info
            await asyncio.sleep(poll_s)

    async def metrics(self) -> str:
        async with self._request("GET", "/metrics") as resp:
            return await resp.text()

    async def openapi(self) -> dict[str, Any]:
        async with self._request("GET", "/openapi.json") as resp:
            document: dict[str, Any] = await resp.json()
            return document

    async def healthy(self) -> bool:
        try:
            async with self._request("GET", "/healthz") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False
