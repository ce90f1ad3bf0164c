"""The JobManager as its REST API reports it: jobs, the status' job, its checkpoints, a savepoint.

The operator reaches the JobManager at the address its Service implies
(``desired.jobmanager.rest_url``: ``https://<name>-jobmanager.<namespace>.svc:8081``),
with the job's :class:`Credentials` (the REST token, and the CAs that verify the
JobManager's certificate, from the Secrets the operator owns: ``acting.credentials``),
passed through a :data:`Resolve` function: the identity in a cluster; elsewhere (an
operator run on a laptop, tests running JobManagers as local processes) it maps the
Service's URL to one that reaches the JobManager, e.g. :func:`url_template` (the
operator's ``--jobmanager-url-template``) through ``kubectl proxy``.

:func:`observe` never raises for the JobManager's sake. Either every call it needs
answered, and the observation is ``reachable`` (a job or savepoint request the
JobManager does not know, 404, is then None: it does not know it), or it is not
reachable at all and nothing else it holds means anything. A half answer is never
returned: a job that looks unknown only because its request failed would read as a
lost job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import ssl
import string
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import pydantic

from streamjob_runtime.api import client as rest_client
from streamjob_runtime.api import models as rest

log = logging.getLogger(__name__)

Resolve = Callable[[str], str]
"""Maps the JobManager Service's REST URL to a URL this process can reach."""

T = TypeVar("T")


def identity(url: str) -> str:
    return url


_SERVICE_URL = re.compile(
    r"^(?P<scheme>https?)://(?P<service>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
    r"\.(?P<namespace>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?"
    r":(?P<port>[0-9]+)(?P<rest>[/?].*)?$"
)
TEMPLATE_FIELDS = ("service", "namespace", "port")
KUBECTL_PROXY_TEMPLATE = (
    "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/https:{service}:{port}/proxy"
)


def url_template(template: str) -> Resolve:
    """A :data:`Resolve` that puts a Service URL's parts into ``template``.

    ``template`` names ``{service}``, ``{namespace}`` and ``{port}`` (any of them); the
    request's path follows it. E.g. :data:`KUBECTL_PROXY_TEMPLATE` reaches the JobManagers
    of an operator run outside the cluster through ``kubectl proxy`` (the API server's
    Service proxy). URLs that are not a Service's (``<service>.<namespace>.svc:<port>``)
    stay as they are. Raises ValueError, saying what to fix, for a template that is not
    one.
    """
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"the JobManager URL template {template!r} is malformed: {e}") from None
    unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(
            f"the JobManager URL template {template!r} names {', '.join(unknown)}: it may name"
            " only {service}, {namespace} and {port}"
        )
    if not template.startswith(("http://", "https://")):
        raise ValueError(
            f"the JobManager URL template {template!r} is not an http:// or https:// URL"
        )

    def resolve(url: str) -> str:
        match = _SERVICE_URL.match(url)
        if match is None:
            return url
        base = template.format(
            service=match["service"], namespace=match["namespace"], port=match["port"]
        )
        return base.rstrip("/") + (match["rest"] or "")

    return resolve


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What the operator's REST client presents and trusts for one StreamJob's JobManagers:
    the bearer ``token`` and ``ca``, the PEM CAs its certificate may be signed by."""

    token: str
    ca: bytes

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the JobManager's certificate by the job's CAs (and its name)."""
        return ssl.create_default_context(cadata=self.ca.decode())


def session() -> aiohttp.ClientSession:
    """The session the operator's REST clients share (:func:`client`): connections to one
    address are reused from pass to pass (a JobManager reached over plain HTTP, as through
    ``kubectl proxy``, or the same SSL context) and closed after :data:`KEEPALIVE_S` idle,
    so a thousand JobManagers' TLS connections are not kept between passes."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    )


KEEPALIVE_S = 1.0


def client(
    url: str,
    timeout_s: float,
    credentials: Credentials | None,
    shared: aiohttp.ClientSession | None = None,
) -> rest_client.JobManagerClient:
    """A REST client for ``url`` with ``credentials`` (none: anonymous, plain trust), on
    the ``shared`` session when given (else one of its own). The SSL context is made
    for an ``https://`` URL only."""
    if credentials is None:
        return rest_client.JobManagerClient(url, timeout_s=timeout_s, session=shared)
    return rest_client.JobManagerClient(
        url,
        timeout_s=timeout_s,
        token=credentials.token,
        ssl=credentials.ssl_context if url.startswith("https:") else None,
        session=shared,
    )


@dataclasses.dataclass(frozen=True)
class RestObservation:
    reachable: bool
    jobs: tuple[rest.JobOverview, ...] = ()
    job: rest.JobDetails | None = None
    checkpoints: rest.CheckpointingStatistics | None = None
    savepoint: rest.SavepointInfo | None = None
    overview: rest.ClusterOverview | None = None  # when asked for
    error: str | None = None  # why it was not reachable


UNREACHABLE = RestObservation(reachable=False)

# What a JobManager that cannot answer looks like from here: refused, reset, DNS
# failure, timeout, a standby's 503, a body that is not the API's.
_FAILURES = (
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    pydantic.ValidationError,
    rest_client.RestError,
)


async def _known(call: Awaitable[T]) -> T | None:
    """The answer, or None for a 404 (the JobManager does not know it); else raises."""
    try:
        return await call
    except rest_client.RestError as e:
        if e.status == 404:
            return None
        raise


async def observe(
    url: str,
    job_id: str | None,
    savepoint: tuple[str, str] | None,
    timeout_s: float = 5.0,
    *,
    overview: bool = False,
    credentials: Credentials | None = None,
    shared: aiohttp.ClientSession | None = None,
) -> RestObservation:
    """What the JobManager at ``url`` says of its jobs, of ``job_id`` and of the savepoint
    request ``savepoint`` = (job id, request id); and with ``overview`` of its cluster
    (``GET /overview``: TaskManagers and slots). ``shared``: see :func:`client`."""
    try:
        async with client(url, timeout_s, credentials, shared) as jm:
            jobs = (await jm.list_jobs()).jobs
            job = checkpoints = None
            if job_id is not None:
                job = await _known(jm.job(job_id))
                if job is not None:
                    checkpoints = await _known(jm.checkpoints(job_id))
            info = None
            if savepoint is not None:
                info = await _known(jm.savepoint_status(*savepoint))
            cluster = await jm.overview() if overview else None
            return RestObservation(True, tuple(jobs), job, checkpoints, info, cluster)
    except _FAILURES as e:
        log.debug("JobManager at %s not reachable: %r", url, e)
        return dataclasses.replace(UNREACHABLE, error=f"{type(e).__name__}: {e}")
