"""plan(): a deployment under way that the JobManager refuses, or that a newer spec
retargets, as table cases (the helpers and invariants of tests.operator.test_planning)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.desired import submission, target
from streamjob_operator.planning import (
    actions,
    changes,
    configuration,
    lifecycle,
    observed,
    planner,
)
from tests.operator.test_planning import (
    EMPTY_JM,
    META,
    NEW_IMAGE,
    NOW,
    PROGRESSING,
    STATELESS,
    SUSPENDED,
    Case,
    Lifecycle,
    State,
    Step,
    _has,
    ago,
    check_case,
    details,
    parsed,
    raw,
    seen,
    stamp,
    stats,
    status,
    summary,
)

FIXED = raw(job__entrypoint="examples.fixed")
REFUSAL = "cannot load job file examples.wordcount: no module named examples.wordcount"
STABILIZING = models.Condition(
    type=lifecycle.STABLE,
    status="Unknown",
    reason=lifecycle.STABILIZING,
    message="the job was just submitted",
    lastTransitionTime=stamp(ago(seconds=20)),
)
TIMED_OUT = models.Condition(
    type=lifecycle.STABLE,
    status="False",
    reason=lifecycle.STABILITY_TIMEOUT,
    message="not running",
    lastTransitionTime=stamp(ago(minutes=1)),
)


def refused(
    at: datetime.datetime, spec: models.StreamJobSpec | None = None, restore: str | None = None
) -> observed.Refusal:
    """The JobManager refused the submission of ``spec`` (default BASE) at ``at``."""
    job = target.StreamJob(META.name, META.namespace, META.uid, spec or parsed())
    sent = submission.job_submission(job, target.DeploymentTarget(savepoint_path=restore))
    return observed.Refusal(sent, REFUSAL, at)


def submitting(**fields: Any) -> models.StreamJobStatus:
    """The first deployment of BASE at step submit-job, no job yet."""
    fields.setdefault("deployed", ago(seconds=30))
    return status(stable=False, step=Step.SUBMIT_JOB, job_id=None, job_state=None, **fields)


def _reconciled(spec: dict[str, Any]) -> Callable[[actions.Plan], None]:
    def check(plan: actions.Plan) -> None:
        text = plan.status.reconciliation.lastReconciledSpec
        assert text == changes.encode(models.StreamJobSpec.model_validate(spec))

    return check


CASES = [
    # -- a refused submission --------------------------------------------------------------
    Case(
        "a refused submission is reported at once and not sent again right away",
        dataclasses.replace(EMPTY_JM, refused=refused(ago(seconds=2))),
        submitting(),
        ["event SubmitFailed"],
        lifecycle=Lifecycle.CREATED, step=Step.SUBMIT_JOB,
        error=f"the JobManager refused the job: {REFUSAL}; fix the spec and apply it",
        check=lambda p: _degraded(p, True),
    ),
    Case(
        "a refused submission is sent again once the reconcile interval passed",
        dataclasses.replace(EMPTY_JM, refused=refused(ago(minutes=2))),
        submitting(error=f"the JobManager refused the job: {REFUSAL}; fix the spec and apply it"),
        ["write submit-job", "submit -"],
        step=Step.SUBMIT_JOB, error="the JobManager refused the job",
    ),
    Case(
        "the refusal of another submission (an earlier spec) is not this one's",
        dataclasses.replace(
            EMPTY_JM, refused=refused(ago(seconds=2), parsed(job__entrypoint="examples.old"))
        ),
        submitting(),
        ["write submit-job", "submit -"], step=Step.SUBMIT_JOB, error="",
    ),
    # -- a newer spec while the deployment is under way ------------------------------------
    Case(
        "a fixed spec while a refused first deployment submits goes to the new spec",
        dataclasses.replace(EMPTY_JM, refused=refused(ago(seconds=2))),
        submitting(),
        ["event Retargeted", "write apply-children", "apply -"],
        spec=FIXED, lifecycle=Lifecycle.CREATED, step=Step.APPLY_CHILDREN, restore=None,
        error="", check=_reconciled(FIXED),
    ),
    Case(
        "a fixed spec after the first deployment timed out (FAILED) starts it again",
        EMPTY_JM,
        submitting(conditions=[TIMED_OUT], deployed=ago(minutes=10),
                   error="not running 5m0s after its deployment began: fix the spec"),
        ["event Retargeted", "write apply-children", "apply -"],
        spec=FIXED, lifecycle=Lifecycle.CREATED, step=Step.APPLY_CHILDREN,
        check=_has(reconciliation__deployedAt=stamp(NOW)),
    ),
    Case(
        "a newer spec while the upgraded children come up keeps the restore path",
        seen(reachable=False, jm=PROGRESSING, tm=PROGRESSING),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.APPLY_CHILDREN, restore="/sp/s1",
               job_id=None, job_state=None, deployed=ago(seconds=20)),
        ["event Retargeted", "write apply-children", "apply /sp/s1"],
        spec=raw(image="streamjob:3"), lifecycle=Lifecycle.UPGRADING,
        step=Step.APPLY_CHILDREN, restore="/sp/s1", check=_reconciled(raw(image="streamjob:3")),
    ),
    Case(
        "a newer stateless spec while the upgraded job submits starts from empty state",
        EMPTY_JM,
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.SUBMIT_JOB, restore="/sp/s1",
               job_id=None, job_state=None, deployed=ago(seconds=20)),
        ["event Retargeted", "write apply-children", "apply -"],
        spec=STATELESS, step=Step.APPLY_CHILDREN, restore=None,
    ),
    Case(
        "a suspended spec while the first deployment submits removes the children",
        EMPTY_JM,
        submitting(),
        ["event Retargeted", "write delete-deployments", "delete taskmanager",
         "delete jobmanager", "delete ha"],
        spec=SUSPENDED, step=Step.DELETE_DEPLOYMENTS,
    ),
    Case(
        "once the JobManager lists a job, a newer spec waits to upgrade it",
        seen(details("j2")),
        submitting(),
        ["event Deployed"], spec=FIXED, step=None,
    ),
    # -- a resume of the last stable spec passes the stability gate again -----------------
    Case(
        "a resumed job with the last stable spec is DEPLOYED, not STABLE",
        seen(details("j2")),
        status(state=State.UPGRADING, step=Step.SUBMIT_JOB, job_id=None, job_state=None,
               restore="/sp/suspend", deployed=ago(seconds=20)),
        ["event Deployed"], lifecycle=Lifecycle.DEPLOYED, step=None,
        check=lambda p: _stable(p, "Unknown"),
    ),
    Case(
        "the resumed job waits for the stability gate",
        seen(details("j2"), checkpoints=stats(completed=1)),
        status(job_id="j2", deployed=ago(seconds=31), conditions=[STABILIZING]),
        [], lifecycle=Lifecycle.DEPLOYED, check=lambda p: _stable(p, "Unknown"),
    ),
    Case(
        "the resumed job passes the stability gate: STABLE, with its condition and Event",
        seen(details("j2"), checkpoints=stats(completed=2)),
        status(job_id="j2", deployed=ago(seconds=31), conditions=[STABILIZING]),
        ["event Stable"], lifecycle=Lifecycle.STABLE, check=lambda p: _stable(p, "True"),
    ),
]  # fmt: skip


def _stable(plan: actions.Plan, value: str) -> None:
    found = lifecycle.condition(plan.status, lifecycle.STABLE)
    assert found is not None
    assert found.status == value


def _degraded(plan: actions.Plan, value: bool) -> None:
    found = lifecycle.condition(plan.status, lifecycle.DEGRADED)
    assert found is not None
    assert found.status == str(value)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    check_case(case)


def test_a_refusal_is_reported_by_one_event_across_passes() -> None:
    refusing = dataclasses.replace(EMPTY_JM, refused=refused(ago(seconds=2)))
    config = configuration.OperatorConfiguration()
    first = planner.plan(refusing, raw(), submitting(), NOW, config)
    later = NOW + datetime.timedelta(seconds=5)
    second = planner.plan(refusing, raw(), first.status, later, config)
    assert summary(first) == ["event SubmitFailed"]
    assert summary(second) == []
    assert second.status.error == first.status.error
