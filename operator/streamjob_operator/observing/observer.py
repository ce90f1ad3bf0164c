"""One pass's observation of a StreamJob: its Deployments, its JobManager, its HA metadata.

:func:`observe` fills in planning's :class:`observed.Observed` and never mutates
anything. Kubernetes that cannot be read raises (kubernetes_asyncio's ``ApiException``,
``aiohttp.ClientError``, ``TimeoutError``): a guess there, such as "absent", would
make planning re-create what exists; the pass fails and is retried. A JobManager
that cannot be read is observed as unreachable (``observing.jobmanager``), and so is
one whose Deployment has no ready pod, without asking: its Service routes to ready pods
only, so the request could only fail, after a DNS lookup and a connection attempt that
cost time and threads (with many StreamJobs whose pods are not up yet, a resolver that
drops queries would hold every lookup thread for seconds).

What is observed is the cluster of ``status.job`` (``planning.bluegreen.job_target``:
the uncoloured copy named after the StreamJob for ``recreate``, else a colour's) with
the spec being deployed (``planning.lifecycle.deployed_spec``), which decides whether
HA metadata is looked at; and during a blue-green upgrade or fallback the other
colour's cluster too (``bluegreen.other_target``): its Deployments, and whether its
JobManager answers, with which jobs and how many registered slots.
"""

from __future__ import annotations

from collections.abc import Set

import aiohttp
from kubernetes_asyncio import client

from streamjob_operator.desired import ha, jobmanager, metadata, target
from streamjob_operator.observing import children, resource
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.planning import bluegreen, lifecycle, observed


async def observe(
    api: client.ApiClient,
    streamjob: resource.StreamJobResource,
    *,
    resolve: rest_observing.Resolve = rest_observing.identity,
    disposed: Set[str] = frozenset(),
    kept_files: Set[str] = frozenset(),
    refused: observed.Refusal | None = None,
    rest_timeout_s: float = 5.0,
    credentials: rest_observing.Credentials | None = None,
    read: children.Read | None = None,
    rest_session: aiohttp.ClientSession | None = None,
) -> observed.Observed:
    """``disposed``: the savepoint locations acting disposed of (acting's memory);
    ``kept_files``: those of them whose files remain; ``refused``: the last submission a
    JobManager refused (acting's memory); ``credentials``: the job's REST token and CAs
    (``acting.credentials``); ``read``: where to keep the Deployments as read, for the
    pass's acting; ``rest_session``: the session JobManager requests share
    (``observing.jobmanager.session``)."""
    status = streamjob.status
    spec = lifecycle.deployed_spec(status)
    job = streamjob.identity(spec)
    here = bluegreen.job_target(status)
    jm = await children.read_deployment(api, job, here, metadata.Component.JOBMANAGER, read)
    jm_state = children.deployment_state(jm)
    tm_state = await children.deployment(api, job, here, metadata.Component.TASKMANAGER, read)
    job_id = status.job.id
    ha_checkpoint = None
    if spec is not None and ha.enabled(spec) and job_id is not None:
        ha_checkpoint = await children.ha_checkpoint(api, job, here, job_id)
    rest = rest_observing.UNREACHABLE
    if children.has_ready_pod(jm):
        pending = status.pendingSavepoint
        savepoint = None
        if pending is not None and pending.triggerId is not None:
            savepoint_job = pending.jobId or job_id
            if savepoint_job is not None:
                savepoint = (savepoint_job, pending.triggerId)
        url = resolve(jobmanager.rest_url(job, here))
        rest = await rest_observing.observe(
            url, job_id, savepoint, rest_timeout_s, credentials=credentials, shared=rest_session
        )
    other = None
    there = bluegreen.other_target(status)
    if there is not None:
        other = await cluster(
            api, job, there, resolve, rest_timeout_s, credentials, read, rest_session
        )
    return observed.Observed(
        meta=streamjob.meta,
        jobmanager=jm_state,
        taskmanager=tm_state,
        rest_reachable=rest.reachable,
        jobs=rest.jobs,
        job=rest.job,
        checkpoints=rest.checkpoints,
        savepoint=rest.savepoint,
        ha_checkpoint=ha_checkpoint,
        disposed=frozenset(disposed),
        kept_files=frozenset(kept_files),
        refused=refused,
        color=here.color,
        other=other,
    )


async def cluster(
    api: client.ApiClient,
    job: target.StreamJob,
    where: target.DeploymentTarget,
    resolve: rest_observing.Resolve,
    rest_timeout_s: float,
    credentials: rest_observing.Credentials | None = None,
    read: children.Read | None = None,
    rest_session: aiohttp.ClientSession | None = None,
) -> observed.Cluster:
    """A colour's cluster without regard to ``status.job``: Deployments, and its
    JobManager's jobs and registered slots."""
    jm = await children.read_deployment(api, job, where, metadata.Component.JOBMANAGER, read)
    jm_state = children.deployment_state(jm)
    tm_state = await children.deployment(api, job, where, metadata.Component.TASKMANAGER, read)
    if not children.has_ready_pod(jm):
        return observed.Cluster(where.color, jm_state, tm_state)
    url = resolve(jobmanager.rest_url(job, where))
    rest = await rest_observing.observe(
        url,
        None,
        None,
        rest_timeout_s,
        overview=True,
        credentials=credentials,
        shared=rest_session,
    )
    slots = None if rest.overview is None else rest.overview.slots_total
    return observed.Cluster(where.color, jm_state, tm_state, rest.reachable, rest.jobs, slots)
