"""One pass's observation of a StreamJob: its Deployments, its JobManager, its HA metadata.

:func:`observe` fills in planning's :class:`observed.Observed` and never mutates
anything. Kubernetes that cannot be read raises (kubernetes_asyncio's ``ApiException``,
``aiohttp.ClientError``, ``TimeoutError``): a guess there, such as "absent", would
make planning re-create what exists; the pass fails and is retried. A JobManager
that cannot be read is observed as unreachable (``observing.jobmanager``).

What is observed is the current deployment target (``recreate``: one copy of the
cluster named after the StreamJob; blue-green is not planned yet) of the spec being
deployed (``planning.lifecycle.deployed_spec``), which decides whether HA metadata is
looked at.
"""

from __future__ import annotations

from collections.abc import Set

from kubernetes_asyncio import client

from streamjob_operator.desired import ha, jobmanager, metadata, target
from streamjob_operator.observing import children, resource
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.planning import lifecycle, observed

HERE = target.DeploymentTarget()


async def observe(
    api: client.ApiClient,
    streamjob: resource.StreamJobResource,
    *,
    resolve: rest_observing.Resolve = rest_observing.identity,
    disposed: Set[str] = frozenset(),
    rest_timeout_s: float = 5.0,
) -> observed.Observed:
    """``disposed``: the savepoint locations acting disposed of (acting's memory)."""
    status = streamjob.status
    spec = lifecycle.deployed_spec(status)
    job = streamjob.identity(spec)
    jm_state = await children.deployment(api, job, HERE, metadata.Component.JOBMANAGER)
    tm_state = await children.deployment(api, job, HERE, metadata.Component.TASKMANAGER)
    job_id = status.job.id
    ha_checkpoint = None
    if spec is not None and ha.enabled(spec) and job_id is not None:
        ha_checkpoint = await children.ha_checkpoint(api, job, HERE, job_id)
    rest = rest_observing.UNREACHABLE
    if jm_state is not observed.DeploymentState.ABSENT:
        pending = status.pendingSavepoint
        savepoint = None
        if pending is not None and pending.triggerId is not None:
            savepoint_job = pending.jobId or job_id
            if savepoint_job is not None:
                savepoint = (savepoint_job, pending.triggerId)
        url = resolve(jobmanager.rest_url(job, HERE))
        rest = await rest_observing.observe(url, job_id, savepoint, rest_timeout_s)
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
    )
