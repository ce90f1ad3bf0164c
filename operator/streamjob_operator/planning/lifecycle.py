"""The lifecycle state, derived from status (the Flink operator's ``getLifecycleState``).

Status stores what happened (the reconciled and stable specs, the reconciliation state
and step, the job's state, conditions); the lifecycle state is a function of those and
is never decided on its own. Planning writes it to ``status.lifecycleState`` only so
that ``kubectl get`` can show it.
"""

from __future__ import annotations

import dataclasses

import pydantic

from streamjob_operator.api import models
from streamjob_operator.planning import changes, steps

Lifecycle = models.LifecycleState
State = models.ReconciliationState

# Conditions planning maintains (types and the reasons lifecycle reads).
READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
STABLE = "Stable"
SPEC_VALID = "SpecValid"
STABILITY_TIMEOUT = "StabilityTimeout"
STABILIZING = "Stabilizing"  # the Stable condition's reason while the gate is pending


def condition(status: models.StreamJobStatus, kind: str) -> models.Condition | None:
    return next((c for c in status.conditions if c.type == kind), None)


def deployed_spec_text(status: models.StreamJobStatus) -> str | None:
    """The spec the current (or in-progress) deployment runs, as JSON.

    ``lastReconciledSpec``, except while rolling back and once rolled back: then the
    last stable spec runs, and ``lastReconciledSpec`` keeps the spec that failed, so
    that it is not deployed again until the user changes the spec.
    """
    r = status.reconciliation
    if r.state in (State.ROLLING_BACK, State.ROLLED_BACK):
        return r.lastStableSpec
    return r.lastReconciledSpec


def deployed_spec(status: models.StreamJobStatus) -> models.StreamJobSpec | None:
    text = deployed_spec_text(status)
    if text is None:
        return None
    try:
        return changes.decode(text)
    except pydantic.ValidationError:
        return None


def stabilizing(status: models.StreamJobStatus) -> bool:
    """The current deployment waits for the stability gate, as its ``Stable`` condition
    says from its submission on, even when its spec is the last stable one (a resume of
    an unchanged spec: the new job has proven nothing yet)."""
    stable = condition(status, STABLE)
    return stable is not None and stable.status == "Unknown" and stable.reason == STABILIZING


def spec_stable(status: models.StreamJobStatus) -> bool:
    """The reconciled spec passed the stability gate, in the deployment that runs now."""
    r = status.reconciliation
    return (
        r.lastStableSpec is not None
        and r.lastStableSpec == r.lastReconciledSpec
        and not stabilizing(status)
    )


def stability_failed(status: models.StreamJobStatus) -> bool:
    stable = condition(status, STABLE)
    return stable is not None and stable.status == "False" and stable.reason == STABILITY_TIMEOUT


def lifecycle_state(status: models.StreamJobStatus) -> Lifecycle:
    """In order: DELETING; CREATED before anything was reconciled; FAILED when a deploy
    did not become stable in time; ROLLING_BACK and UPGRADING while redeploying; DEPLOYED
    while a lost job is recovered; CREATED during the first deployment (reconciliation
    state DEPLOYED with a step under way);
    SUSPENDED; FAILED when the job failed for good; ROLLED_BACK; STABLE when the
    reconciled spec passed the stability gate; else DEPLOYED.
    """
    r = status.reconciliation
    if r.state is State.DELETING:
        return Lifecycle.DELETING
    if r.lastReconciledSpec is None:
        return Lifecycle.CREATED
    if stability_failed(status):
        return Lifecycle.FAILED
    if r.state is State.ROLLING_BACK:
        return Lifecycle.ROLLING_BACK
    if r.state is State.UPGRADING:
        return Lifecycle.UPGRADING
    if r.step == steps.Step.RECOVER_JOB:
        return Lifecycle.DEPLOYED  # a lost job is being recovered
    if r.step is not None:
        return Lifecycle.CREATED
    spec = deployed_spec(status)
    if spec is not None and spec.job.state is models.DesiredJobState.SUSPENDED:
        return Lifecycle.SUSPENDED
    if status.job.state == "FAILED":
        return Lifecycle.FAILED
    if r.state is State.ROLLED_BACK:
        return Lifecycle.ROLLED_BACK
    if spec_stable(status):
        return Lifecycle.STABLE
    return Lifecycle.DEPLOYED


@dataclasses.dataclass(frozen=True)
class DerivedCondition:
    type: str
    value: bool
    reason: str
    message: str = ""


_PROGRESS_REASONS = {
    Lifecycle.CREATED: "Deploying",
    Lifecycle.UPGRADING: "Upgrading",
    Lifecycle.ROLLING_BACK: "RollingBack",
    Lifecycle.DELETING: "Deleting",
    Lifecycle.DEPLOYED: "Stabilizing",
}
_RESTARTING_STATES = frozenset({"RESTARTING", "FAILING"})


def derived_conditions(status: models.StreamJobStatus) -> tuple[DerivedCondition, ...]:
    """``Progressing`` and ``Degraded``, read off the rest of status (after ``lifecycleState``).

    Progressing is True while the operator works towards the spec: a deployment, an
    upgrade, a rollback or a deletion under way (with the step), or a deploy waiting for
    the stability gate; False once there is nothing left to do. Degraded is True when
    something needs a person or the job is not well: a status error, a failed or
    rolled-back deploy, a job that failed or is restarting.
    """
    state = status.lifecycleState
    reason = _PROGRESS_REASONS.get(state)
    step = status.reconciliation.step
    progressing = (
        DerivedCondition(PROGRESSING, True, reason, f"step {step}" if step else "")
        if reason is not None
        else DerivedCondition(PROGRESSING, False, "Reconciled", f"lifecycle {state.value}")
    )
    job_state = status.job.state or ""
    if state is Lifecycle.FAILED:
        degraded = DerivedCondition(DEGRADED, True, "Failed", status.error or "")
    elif state is Lifecycle.ROLLED_BACK:
        degraded = DerivedCondition(
            DEGRADED, True, "RolledBack", "the last stable spec runs; change the spec to retry"
        )
    elif status.error:
        degraded = DerivedCondition(DEGRADED, True, "Error", status.error)
    elif job_state in _RESTARTING_STATES:
        degraded = DerivedCondition(
            DEGRADED, True, "JobRestarting", f"the job is {job_state.lower()}"
        )
    else:
        degraded = DerivedCondition(DEGRADED, False, "AsExpected")
    return progressing, degraded
