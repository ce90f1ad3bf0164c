"""A StreamJob being deleted: stop its job (with a final savepoint when configured,
bounded in time), delete the HA metadata of every cluster it may have run on, and
let it go."""

from __future__ import annotations

import datetime

from streamjob_operator.api import models
from streamjob_operator.desired import target
from streamjob_operator.planning import (
    actions,
    bluegreen,
    clock,
    context,
    lifecycle,
    savepoints,
    steps,
)

Step = steps.Step
State = models.ReconciliationState
Kind = actions.SavepointKind
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def delete(p: context.Pass, asked: datetime.datetime) -> None:
    """Stop the job (final savepoint if configured, bounded in time), then let go."""
    if p.r.state is not State.DELETING:
        p.r.state = State.DELETING
        p.event(NORMAL, "Deleting", "stopping the job before the StreamJob goes")
        bg = p.status.blueGreen
        if bg is not None and bg.next is not None and p.here.color != bluegreen.color(bg.active):
            # The job runs on the next colour: from here on it is the active one.
            p.status.blueGreen = models.BlueGreenStatus(active=bg.next, next=bg.active)
    p.r.step = Step.STOP_JOB
    deadline = asked + p.config.deletion_savepoint_timeout
    savepoints.settle(p)
    spec = lifecycle.deployed_spec(p.status)
    job_id = p.status.job.id
    if p.seen.job_alive and job_id is not None:
        if p.status.pendingSavepoint is not None:
            if p.now < deadline:
                p.soon(min(deadline, p.now + p.config.progress_check_interval))
                return
            p.status.pendingSavepoint = None
            p.event(
                WARNING,
                "FinalSavepointTimedOut",
                f"the savepoint did not complete by {clock.format_time(deadline)}"
                f" ({p.config.deletion_savepoint_timeout} after the deletion): cancelling"
                " the job without it",
            )
        elif (
            p.config.savepoint_on_deletion
            and spec is not None
            and spec.savepoints.directory is not None
            and p.seen.job_running
            and p.now < deadline
            and not p.savepoint_failed
        ):
            pending = savepoints.begin(p, Kind.DELETE)
            p.write()
            savepoints.request(p, pending)
            p.soon(min(deadline, p.now + p.config.progress_check_interval))
            return
        p.write()
        p.emit(actions.CancelJob(job_id, p.here))
        p.soon()
        return
    p.status.pendingSavepoint = None
    p.write()
    # HA metadata has no owner: each cluster this StreamJob may have run goes.
    clusters = [None] if p.status.blueGreen is None else [None, *target.Color]
    for color in clusters:
        p.emit(actions.DeleteHaMetadata(target.DeploymentTarget(color=color)))
    p.emit(actions.FinishDeletion())
