"""A job its JobManager lost, recovered from its newest completed checkpoint.

Without high availability a JobManager that restarted knows no job, while the job's
checkpoints are still in its checkpoint directory (``<checkpointing.storage>/<job
id>``), which only the JobManager reads. The job is submitted again with
``restore_from_latest_in`` that directory and, as the fallback the JobManager takes
when it is newer or there is no checkpoint, the newest savepoint of this deployment
(else the path the job started from). With neither the JobManager refuses, and status
says so: a lost job never restarts from empty state by itself.

Step ``recover-job`` is written first; ``status.job`` names the lost job (whose
directory it is) until the job the JobManager then lists is adopted (``JobRecovered``;
a ``JobLost`` Warning said what happened). A recovery is a restart of the same
deployment: the stability gate is not opened again.
"""

from __future__ import annotations

import dataclasses
import posixpath

from streamjob_operator.api import models
from streamjob_operator.desired import submission
from streamjob_operator.planning import actions, clock, context, observed, steps
from streamjob_runtime.api import models as rest

Step = steps.Step
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def start(p: context.Pass, spec: models.StreamJobSpec) -> None:
    """The JobManager does not know ``status.job``: recover it."""
    p.event(
        WARNING,
        "JobLost",
        f"the JobManager does not know job {p.status.job.id} (it restarted without high"
        f" availability): recovering it from {directory(spec, p.status)}",
    )
    p.r.step = Step.RECOVER_JOB
    p.status.job.state = None  # not known: the JobManager lost it
    carry_on(p, spec)


def directory(spec: models.StreamJobSpec, status: models.StreamJobStatus) -> str:
    """The lost job's checkpoint directory, as the JobManager lays it out."""
    assert status.job.id is not None
    return posixpath.join(spec.checkpointing.storage, status.job.id)


def fallback(status: models.StreamJobStatus) -> str | None:
    """The newest savepoint this deployment took, else the path its job started from."""
    last = status.lastSavepoint
    deployed = status.reconciliation.deployedAt
    if (
        last is not None
        and deployed is not None
        and clock.parse_time(last.time) >= clock.parse_time(deployed)
    ):
        return last.location
    return status.reconciliation.restorePath


def carry_on(p: context.Pass, spec: models.StreamJobSpec) -> None:
    """Step RECOVER_JOB: submit once; adopt the job the JobManager lists."""
    if p.seen.rest_reachable and p.seen.jobs:
        adopt(p, spec, max(p.seen.jobs, key=lambda j: (not j.state.terminal, j.start_time)))
        return
    if p.seen.jobmanager is observed.DeploymentState.ABSENT:
        p.r.step = None  # its Deployment went: applied again, and the job found lost again
        p.soon()
        return
    if not p.seen.rest_reachable:
        p.soon()
        return
    where = dataclasses.replace(p.here, savepoint_path=fallback(p.status))
    job = submission.job_submission(p.streamjob(spec), where).model_copy(
        update={"restore_from_latest_in": directory(spec, p.status)}
    )
    advice = (
        "set job.upgradeMode: stateless and change job.restartNonce to start it from empty state"
    )
    if p.refused(job, advice):
        return
    p.write()
    p.emit(actions.SubmitJob(job, where))
    p.soon_answer()


def adopt(p: context.Pass, spec: models.StreamJobSpec, job: rest.JobOverview) -> None:
    lost = p.status.job.id
    restored = directory(spec, p.status)
    fell_back = fallback(p.status)
    p.status.job = models.JobInfo(
        id=job.jid,
        state=job.state.value,
        startTime=clock.format_time(clock.from_epoch_ms(job.start_time)),
        restarts=job.restarts,
        lastRestartTime=clock.format_time(p.now),  # the stability window starts again
    )
    p.status.lastCheckpoint = None
    p.r.step = None
    also = "" if fell_back is None else f" (or {fell_back}, when newer)"
    p.event(
        NORMAL,
        "JobRecovered",
        f"job {lost} recovered as job {job.jid} from the newest completed checkpoint in"
        f" {restored}{also}",
    )
    p.soon()
