"""plan(): a job its JobManager lost (it restarted without HA) is recovered from its newest
completed checkpoint, as table cases (the helpers of tests.operator.test_planning)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from streamjob_operator.planning import actions, lifecycle, observed, planner
from tests.operator.test_planning import (
    ABSENT,
    NOW,
    Case,
    Lifecycle,
    Step,
    ago,
    check_case,
    overview,
    raw,
    record,
    seen,
    status,
    summary,
)

LOST = seen(jobs=())  # the JobManager answers, and lists no job: it restarted
STORAGE = raw(checkpointing={"storage": "/state/checkpoints"})


def _submitted(directory: str, fallback: str | None) -> Callable[[actions.Plan], None]:
    def check(plan: actions.Plan) -> None:
        [sent] = plan.of_type(actions.SubmitJob)
        assert sent.submission.restore_from_latest_in == directory
        assert sent.submission.savepoint_path == fallback

    return check


CASES = [
    Case(
        "a lost job is submitted again from the newest checkpoint in its directory",
        LOST, status(STORAGE, restore="/sp/upgrade"),
        ["event JobLost", "write recover-job", "submit /sp/upgrade"], spec=STORAGE,
        step=Step.RECOVER_JOB, lifecycle=Lifecycle.DEPLOYED,
        check=_submitted("/state/checkpoints/j1", "/sp/upgrade"),
    ),
    Case(
        "a savepoint the lost job took is the fallback, newer than its restore path",
        LOST,
        status(STORAGE, restore="/sp/upgrade", deployed=ago(hours=1),
               last_savepoint=record("/sp/periodic", ago(minutes=5))),
        ["event JobLost", "write recover-job", "submit /sp/periodic"], spec=STORAGE,
        check=_submitted("/state/checkpoints/j1", "/sp/periodic"),
    ),
    Case(
        "an older savepoint (of an earlier deployment) is not the fallback",
        LOST,
        status(STORAGE, restore=None, deployed=ago(hours=1),
               last_savepoint=record("/sp/old", ago(hours=2))),
        ["event JobLost", "write recover-job", "submit -"], spec=STORAGE,
        check=_submitted("/state/checkpoints/j1", None),
    ),
    Case(
        "crash resume: the recovery is recorded, not yet submitted: submit it",
        LOST, status(STORAGE, step=Step.RECOVER_JOB, job_state=None),
        ["write recover-job", "submit -"], spec=STORAGE, step=Step.RECOVER_JOB,
    ),
    Case(
        "the recovered job the JobManager lists is adopted",
        seen(jobs=(overview("j2"),)), status(STORAGE, step=Step.RECOVER_JOB, job_state=None),
        ["event JobRecovered"], spec=STORAGE, step=None, lifecycle=Lifecycle.STABLE,
        check=lambda p: _adopted(p, "j2"),
    ),
    Case(
        "the JobManager Deployment went during the recovery: the running checks take over",
        seen(reachable=False, jm=ABSENT), status(STORAGE, step=Step.RECOVER_JOB, job_state=None),
        [], spec=STORAGE, step=None,
    ),
]  # fmt: skip


def _adopted(plan: actions.Plan, job_id: str) -> None:
    assert plan.status.job.id == job_id
    assert plan.status.job.lastRestartTime is not None
    stable = lifecycle.condition(plan.status, lifecycle.STABLE)
    assert stable is None or stable.status != "Unknown"  # the gate is not opened again


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    check_case(case)


def test_a_refused_recovery_says_what_to_do_and_is_not_sent_again_at_once() -> None:
    lost = status(STORAGE, step=Step.RECOVER_JOB, job_state=None)
    first = planner.plan(LOST, STORAGE, lost, NOW)
    [sent] = first.of_type(actions.SubmitJob)
    refusal = observed.Refusal(sent.submission, "nothing to restore the job from", NOW)
    later = NOW + (NOW - ago(seconds=3))
    second = planner.plan(dataclasses.replace(LOST, refused=refusal), STORAGE, lost, later)
    assert summary(second) == ["event SubmitFailed"]
    assert second.status.error is not None
    assert "nothing to restore the job from" in second.status.error
    assert "job.upgradeMode: stateless" in second.status.error
