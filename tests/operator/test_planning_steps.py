"""plan(): when a step began, a step stuck waiting for deleted Deployments, and a cancel
recorded before it is sent (so a newer spec does not retarget a blue-green upgrade whose
old job is being cancelled). Helpers of tests.operator.test_planning(_bluegreen)."""

from __future__ import annotations

import datetime

from streamjob_operator.api import models
from streamjob_operator.planning import actions, changes, clock, configuration, planner
from tests.operator import test_planning as tp
from tests.operator import test_planning_bluegreen as bg

LAST_STATE = tp.raw(job__upgradeMode="last-state", image="streamjob:2")
CONFIG = configuration.OperatorConfiguration(deletion_timeout=datetime.timedelta(minutes=5))


def deleting(started: datetime.datetime) -> models.StreamJobStatus:
    """An upgrade at step delete-deployments since ``started``."""
    status = tp.status(tp.NEW_IMAGE, state=models.ReconciliationState.UPGRADING,
                       step=tp.Step.DELETE_DEPLOYMENTS, restore="/sp/s1")  # fmt: skip
    status.reconciliation.stepStartedAt = clock.format_time(started)
    return status


STUCK = tp.seen(reachable=False, jm=tp.PROGRESSING, tm=tp.ABSENT)


def test_a_step_records_when_it_began_and_keeps_it_while_it_waits() -> None:
    # a stateless upgrade whose old job is gone moves on to delete-deployments
    stopping = tp.status(tp.STATELESS, state=models.ReconciliationState.UPGRADING,
                         step=tp.Step.STOP_JOB)  # fmt: skip
    entered = planner.plan(tp.seen(reachable=False, jm=tp.PROGRESSING, tm=tp.PROGRESSING),
                           tp.STATELESS, stopping, tp.NOW)  # fmt: skip
    r = entered.status.reconciliation
    assert r.step == tp.Step.DELETE_DEPLOYMENTS
    assert r.stepStartedAt == clock.format_time(tp.NOW)
    [written] = entered.of_type(actions.WriteStatus)
    assert written.status.reconciliation.stepStartedAt == clock.format_time(tp.NOW)
    later = tp.NOW + datetime.timedelta(seconds=30)
    waiting = planner.plan(STUCK, tp.STATELESS, entered.status, later)
    assert waiting.status.reconciliation.stepStartedAt == clock.format_time(tp.NOW)


def test_deployments_not_gone_within_the_deletion_timeout_are_reported_and_waited_for() -> None:
    within = planner.plan(STUCK, tp.NEW_IMAGE, deleting(tp.ago(minutes=4)), tp.NOW, CONFIG)
    assert within.status.error is None
    assert "event DeletionStuck" not in tp.summary(within)

    stuck = planner.plan(STUCK, tp.NEW_IMAGE, deleting(tp.ago(minutes=6)), tp.NOW, CONFIG)
    assert tp.summary(stuck) == [
        "write delete-deployments",
        *tp.DELETES,
        "event DeletionStuck",
    ]
    assert stuck.status.error is not None
    assert stuck.status.error.startswith(
        "the old JobManager Deployment: still being deleted 0:05:00 after step"
        " delete-deployments began"
    )
    assert "kubectl delete pod --force" in stuck.status.error
    assert stuck.status.reconciliation.step == tp.Step.DELETE_DEPLOYMENTS  # still waiting
    assert not stuck.of_type(actions.ApplyChildren)
    # reported once: the next pass keeps the error without another Event
    again = planner.plan(STUCK, tp.NEW_IMAGE, stuck.status, tp.NOW, CONFIG)
    assert "event DeletionStuck" not in tp.summary(again)
    assert again.status.error == stuck.status.error


def test_a_cancel_is_recorded_in_status_before_it_is_sent() -> None:
    checkpoint = (4, "/checkpoints/j1/chk-4", tp.ago(seconds=10))
    stopping = tp.status(LAST_STATE, state=models.ReconciliationState.UPGRADING,
                         step=tp.Step.STOP_JOB, last_checkpoint=checkpoint)  # fmt: skip
    plan = planner.plan(tp.seen(), LAST_STATE, stopping, tp.NOW)
    assert tp.summary(plan) == ["write stop-job", "cancel j1"]
    [written] = plan.of_type(actions.WriteStatus)
    assert written.status.reconciliation.cancelRequested == "j1"


def test_a_new_spec_at_stop_active_once_the_cancel_was_sent_waits_for_the_end_of_the_upgrade() -> (
    None
):
    # The cancel was sent (status says so) and the JobManager still reports the job
    # RUNNING: the stop is under way, so the new spec is not applied to the next colour.
    status = bg.bg_status(bg.LAST_STATE_V2, tp.Step.STOP_ACTIVE, restore=None,
                          checkpoint=(4, "/checkpoints/j1/chk-4", tp.ago(seconds=10)))  # fmt: skip
    status.reconciliation.cancelRequested = "j1"
    plan = planner.plan(
        bg.sees(bg.BLUE, tp.details("j1"), other=bg.WARM_GREEN), bg.LAST_STATE_V3, status, tp.NOW
    )
    assert bg.rendered(plan) == ["write stop-active", "cancel j1 blue"]
    r = plan.status.reconciliation
    assert r.step == tp.Step.STOP_ACTIVE
    assert r.lastReconciledSpec == changes.encode(
        models.StreamJobSpec.model_validate(bg.LAST_STATE_V2)
    )
