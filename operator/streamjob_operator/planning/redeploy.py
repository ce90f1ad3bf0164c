"""The steps of a redeploy in place (``steps.ORDER``), as functions of the pass.

Stop the job (stop-with-savepoint, or cancel) and choose the restore path; delete the
JobManager and TaskManager Deployments and the HA metadata; apply the new children;
submit the job and adopt the one the JobManager lists. Each step is written to status
(with the target spec and the restore path) before its destructive action, and a
pass moves through as many steps as the observation allows.
"""

from __future__ import annotations

import dataclasses

from streamjob_operator.api import models
from streamjob_operator.desired import submission
from streamjob_operator.planning import (
    actions,
    bluegreen,
    changes,
    clock,
    context,
    lifecycle,
    observed,
    restore,
    savepoints,
    steps,
    validation,
)
from streamjob_runtime.api import models as rest

Step = steps.Step
State = models.ReconciliationState
Kind = actions.SavepointKind
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def retarget(
    p: context.Pass, spec: models.StreamJobSpec, valid: models.StreamJobSpec | None
) -> models.StreamJobSpec:
    """Before the old job is gone, a newer spec replaces the target (e.g. to unblock
    an upgrade that found no usable state by switching to stateless)."""
    if (
        valid is None
        or p.r.state is not State.UPGRADING
        or p.status.pendingSavepoint is not None
        or changes.encode(valid) == p.r.lastReconciledSpec
    ):
        return spec
    mode = valid.job.upgradeMode
    errors = validation.transition_errors(
        spec, valid, with_state=mode is not models.UpgradeMode.STATELESS
    )
    if errors:
        p.error("cannot apply the new spec: " + "; ".join(errors), "InvalidChange")
        return spec
    p.r.lastReconciledSpec = changes.encode(valid)
    p.event(NORMAL, "Retargeted", "the upgrade under way now goes to the new spec")
    return valid


def stop_job(
    p: context.Pass,
    spec: models.StreamJobSpec,
    step: Step = Step.STOP_JOB,
    then: bluegreen.Then | None = None,
) -> None:
    """Step STOP_JOB (or ``step``): stop the job of ``status.job`` and choose what the
    next one restores from; then ``then(spec, restore)``, by default the next step
    in place (delete the Deployments)."""
    p.r.step = step
    then = then or (lambda s, path: delete_deployments(p, s, restore=path))
    rolling_back = p.r.state is State.ROLLING_BACK
    mode = spec.job.upgradeMode
    with_savepoint = mode is models.UpgradeMode.SAVEPOINT and not rolling_back
    suspend = spec.job.state is models.DesiredJobState.SUSPENDED
    job_id = p.status.job.id
    if p.status.pendingSavepoint is not None:
        p.soon_answer()  # a savepoint is in flight: the JobManager takes one at a time
        return
    if p.stopped_with is not None:
        then(spec, p.stopped_with)
        return
    if with_savepoint and p.seen.job_running and not p.savepoint_failed:
        assert job_id is not None
        pending = savepoints.begin(p, Kind.SUSPEND if suspend else Kind.UPGRADE)
        p.write()
        savepoints.request(p, pending)
        return
    if with_savepoint and p.seen.job_alive and p.savepoint_failed:
        p.soon()  # the failed stop restarts the job: take the savepoint when it runs
        return
    choice = restore.choose_restore(p, spec, rolling_back)
    if isinstance(choice, restore.Blocked):
        p.error(choice.message, "UpgradeBlocked")
        return
    if p.seen.job_alive:
        assert job_id is not None
        p.r.cancelRequested = job_id
        p.write()
        p.emit(actions.CancelJob(job_id, p.here))
        p.soon_answer()
        return
    if choice.note is not None:
        p.event(WARNING, "CheckpointFallback", choice.note)
    p.r.cancelRequested = None  # the stop is over
    then(spec, choice.path)


def delete_deployments(
    p: context.Pass, spec: models.StreamJobSpec, restore: str | None = None
) -> None:
    """Step DELETE_DEPLOYMENTS: the old JobManager, TaskManagers and HA metadata go.

    ``restore`` (what the next job restores from) is written on entering the step;
    a pass that resumes the step keeps the one in status.
    """
    if p.r.step != Step.DELETE_DEPLOYMENTS:
        p.r.step = Step.DELETE_DEPLOYMENTS
        p.r.restorePath = restore
    p.write()
    if p.here.color != bluegreen.deploy_color(spec, p.status):
        p.emit(actions.DeleteChildren(p.here))  # the strategy changed: all of it
    else:
        p.emit(actions.DeleteTaskManager(p.here))
        p.emit(actions.DeleteJobManager(p.here))
        p.emit(actions.DeleteHaMetadata(p.here))
    if not p.seen.deployments_absent:
        remaining = [
            name
            for name, state in (
                ("JobManager", p.seen.jobmanager),
                ("TaskManager", p.seen.taskmanager),
            )
            if state is not observed.DeploymentState.ABSENT
        ]
        p.awaiting_deletion(f"the old {' and '.join(remaining)} Deployment")
        return
    if spec.job.state is models.DesiredJobState.SUSPENDED:
        p.r.step = None
        p.r.state = State.DEPLOYED
        p.event(NORMAL, "Suspended", f"suspended; resumes from {p.r.restorePath}")
        return
    apply_children(p, spec)


def apply_children(p: context.Pass, spec: models.StreamJobSpec, afresh: bool = False) -> None:
    """Step APPLY_CHILDREN: the new children, then wait for the JobManager.

    Entering the step (or ``afresh``: the target changed) starts the deployment's clock
    and forgets the previous job; then the submission waits for the next pass, whose
    observation shows whether the JobManager was replaced."""
    if afresh or p.r.step != Step.APPLY_CHILDREN:
        p.r.step = Step.APPLY_CHILDREN
        color = bluegreen.deploy_color(spec, p.status)
        p.status.blueGreen = None if color is None else models.BlueGreenStatus(active=color.value)
        p.r.deployedAt = clock.format_time(p.now)
        p.status.job = models.JobInfo()
        p.status.lastCheckpoint = None
        p.status.lastPeriodicSavepointTime = None
    p.write()
    where = dataclasses.replace(p.here, savepoint_path=p.r.restorePath)
    p.emit(actions.ApplyChildren(p.streamjob(spec), where))
    if not afresh and p.seen.jobmanager is observed.DeploymentState.READY and p.seen.rest_reachable:
        submit(p, spec)
    else:
        p.soon()


def retarget_deploy(
    p: context.Pass, spec: models.StreamJobSpec, valid: models.StreamJobSpec | None
) -> bool:
    """Steps APPLY_CHILDREN and SUBMIT_JOB, before the JobManager lists a job: a newer
    spec replaces the target (a fixed entrypoint after the JobManager refused the job,
    say); True when it did (and took the step).

    The new children are applied and, once the JobManager is ready, the new job is
    submitted from the same restore path (a first deployment: from the new
    ``initialSavepointPath``; ``stateless``: from empty state). The deployment's clock
    starts again, and a deployment that had timed out is no longer FAILED. Suspended,
    or with the other strategy, the children go first (``delete_deployments``). Once
    the JobManager lists a job, a newer spec is an upgrade of that job instead.
    """
    r = p.r
    if (
        valid is None
        or r.state not in (State.DEPLOYED, State.UPGRADING)
        or changes.encode(valid) == r.lastReconciledSpec
        or (p.seen.rest_reachable and p.seen.jobs)
    ):
        return False
    restore: str | None
    if r.state is State.DEPLOYED:  # the first deployment
        restore = valid.job.initialSavepointPath
    elif valid.job.upgradeMode is models.UpgradeMode.STATELESS:
        restore = None
    else:
        restore = r.restorePath
        errors = validation.transition_errors(spec, valid, with_state=restore is not None)
        if errors:
            p.error("cannot apply the new spec: " + "; ".join(errors), "InvalidChange")
            return False
    r.lastReconciledSpec = changes.encode(valid)
    p.set_condition(lifecycle.STABLE, None, "Redeploying", "retargeted to a new spec")
    p.event(NORMAL, "Retargeted", "the deployment under way now goes to the new spec")
    suspend = valid.job.state is models.DesiredJobState.SUSPENDED
    if suspend or p.here.color != bluegreen.deploy_color(valid, p.status):
        delete_deployments(p, valid, restore=restore)
    else:
        r.restorePath = restore
        apply_children(p, valid, afresh=True)
    return True


def submit(p: context.Pass, spec: models.StreamJobSpec) -> None:
    """Step SUBMIT_JOB: submit once; adopt the job the JobManager lists."""
    if p.seen.rest_reachable and p.seen.jobs:
        adopt(p, max(p.seen.jobs, key=lambda j: (not j.state.terminal, j.start_time)))
        return
    if p.seen.jobmanager is observed.DeploymentState.ABSENT:
        p.r.step = Step.APPLY_CHILDREN  # the JobManager went away: apply it again
        apply_children(p, spec)
        return
    if not p.seen.rest_reachable:
        p.soon()
        return
    p.r.step = Step.SUBMIT_JOB
    where = dataclasses.replace(p.here, savepoint_path=p.r.restorePath)
    job = submission.job_submission(p.streamjob(spec), where)
    if p.refused(job):
        return
    p.write()
    p.emit(actions.SubmitJob(job, where))
    p.soon_answer()


def adopt(p: context.Pass, job: rest.JobOverview) -> None:
    p.status.job = models.JobInfo(
        id=job.jid,
        state=job.state.value,
        startTime=clock.format_time(clock.from_epoch_ms(job.start_time)),
        restarts=job.restarts,
    )
    rolled_back = p.r.state is State.ROLLING_BACK
    p.r.step = None
    p.r.state = State.ROLLED_BACK if rolled_back else State.DEPLOYED
    if rolled_back:
        p.event(WARNING, "RolledBack", f"rolled back to the last stable spec: job {job.jid}")
    else:
        p.set_condition(lifecycle.STABLE, None, lifecycle.STABILIZING, "the job was just submitted")
        p.event(NORMAL, "Deployed", f"job {job.jid} submitted")
    p.soon_answer()  # it runs within a second or two: status shows it then
