"""Looking after the deployed job: lost children or job, a failed job, the stability
gate, periodic savepoints, and the ``Ready`` condition."""

from __future__ import annotations

import dataclasses

from streamjob_operator.api import models
from streamjob_operator.planning import (
    actions,
    clock,
    context,
    lifecycle,
    observed,
    recovery,
    rollback,
    savepoints,
    stability,
)
from streamjob_runtime.api import models as rest

State = models.ReconciliationState
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def look_after(p: context.Pass, spec: models.StreamJobSpec) -> None:
    """The running deployment: lost children or job, failed job, stability, periodic
    savepoints."""
    missing = [
        name
        for name, state in (
            ("JobManager", p.seen.jobmanager),
            ("TaskManager", p.seen.taskmanager),
        )
        if state is observed.DeploymentState.ABSENT
    ]
    if missing:
        # Someone deleted them: apply them again. With HA the new JobManager recovers
        # the job from the HA metadata; without, the job is lost (reported next pass).
        p.event(
            WARNING,
            "ChildrenMissing",
            f"the {' and '.join(missing)} Deployment is missing: applying it again",
        )
        p.write()
        where = dataclasses.replace(p.here, savepoint_path=p.r.restorePath)
        p.emit(actions.ApplyChildren(p.streamjob(spec), where))
        p.soon()
        return
    if job_lost(p):
        recovery.start(p, spec)
        return
    if p.status.job.state == rest.JobStatus.FAILED.value:
        if rollback.rollback_due(p):
            rollback.start_rollback(p, "its job failed before the deployment was stable")
            return
        cause = p.seen.job.failure_cause if p.seen.job is not None else None
        p.error(
            f"job {p.status.job.id} failed: {cause or 'no cause reported'}; fix the spec"
            " and apply it, or change job.restartNonce to restart from the latest state",
            "JobFailed",
        )
        return
    if gate(p, spec):
        return
    savepoints.periodic(p, spec)
    if p.seen.job_running:  # its checkpoints complete: keep lastCheckpoint fresh
        checkpoints = clock.duration(spec.checkpointing.interval)
        p.soon(p.now + max(checkpoints, p.config.checkpoint_status_interval))


def job_lost(p: context.Pass) -> bool:
    job_id = p.status.job.id
    return (
        p.seen.rest_reachable
        and job_id is not None
        and p.seen.job is None
        and all(j.jid != job_id for j in p.seen.jobs)
    )


def gate(p: context.Pass, spec: models.StreamJobSpec) -> bool:
    """The stability gate; True when a rollback started."""
    r = p.r
    if r.state is not State.DEPLOYED or lifecycle.spec_stable(p.status):
        return False
    verdict = stability.judge(spec, p.status, p.seen, p.now)
    if verdict.stable:
        r.lastStableSpec = r.lastReconciledSpec
        p.set_condition(lifecycle.STABLE, True, "Stable")
        p.event(NORMAL, "Stable", "the deployment is stable")
        return False
    if not verdict.timed_out:
        p.set_condition(lifecycle.STABLE, None, lifecycle.STABILIZING, verdict.why_not)
        if verdict.next_check is not None:
            p.soon(min(verdict.next_check, p.now + p.config.progress_check_interval))
        if not p.seen.job_running:
            p.soon_answer()  # a job just submitted runs within a second or two
        elif checkpoints_short(p, spec):
            p.soon(p.now + clock.duration(spec.checkpointing.interval))
        return False
    why = f"not stable {spec.stability.timeout} after its deployment: {verdict.why_not}"
    if rollback.rollback_due(p):
        rollback.start_rollback(p, why)
        return True
    if lifecycle.stability_failed(p.status):
        p.errors.append(why)
        return False
    next_step = (
        "rollback.enabled is off"
        if r.lastStableSpec not in (None, r.lastReconciledSpec)
        else "there is no other stable spec to roll back to"
    )
    p.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, why)
    p.error(f"{why} ({next_step}): fix the spec and apply it", "StabilityTimeout")
    return False


def checkpoints_short(p: context.Pass, spec: models.StreamJobSpec) -> bool:
    """The gate still waits for checkpoints: the next one completes about a checkpoint
    interval from now, which may be sooner than a progress check."""
    completed = 0 if p.seen.checkpoints is None else p.seen.checkpoints.counts.completed
    return completed < spec.stability.checkpoints


def ready_condition(p: context.Pass) -> None:
    state = p.status.job.state
    if p.seen.job_running:
        p.set_condition(lifecycle.READY, True, "JobRunning")
    else:
        reason = "NoJob" if state is None else f"Job{state.title()}"
        p.set_condition(lifecycle.READY, False, reason)
