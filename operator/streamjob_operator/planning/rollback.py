"""Rollback to the last stable spec, and the deploy deadline that can start one.

A deployment that does not become stable (or whose job fails) before
``stability.timeout`` goes back to the last stable spec, from the restore path of its
upgrade, when the new spec enables ``rollback``; without a restore path (and not
``stateless``) it cannot, and status says so.
"""

from __future__ import annotations

from streamjob_operator.api import models
from streamjob_operator.planning import actions, changes, clock, context, lifecycle, redeploy

State = models.ReconciliationState
WARNING = actions.EventType.WARNING


def can_roll_back(p: context.Pass) -> bool:
    """Whether the deployment of ``lastReconciledSpec`` may go back to the last stable
    spec: there is one, it is another spec, and the new spec enables rollback."""
    r = p.r
    return (
        r.lastReconciledSpec is not None
        and r.lastStableSpec is not None
        and r.lastStableSpec != r.lastReconciledSpec
        and changes.decode(r.lastReconciledSpec).rollback.enabled
    )


def rollback_due(p: context.Pass) -> bool:
    """Whether this deployed, not yet stable, deployment may be rolled back."""
    return p.r.state is State.DEPLOYED and can_roll_back(p)


def rolling_back(p: context.Pass) -> bool:
    return p.r.state is State.ROLLING_BACK


def start_rollback(p: context.Pass, why: str) -> None:
    failed = changes.decode(p.r.lastReconciledSpec or "{}")
    if p.r.restorePath is None and failed.job.upgradeMode is not models.UpgradeMode.STATELESS:
        message = (
            f"{why}; it cannot be rolled back: no savepoint was taken for the upgrade. Fix"
            " the spec and apply it"
        )
        p.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, message)
        p.error(message, "RollbackImpossible")
        return
    p.r.state = State.ROLLING_BACK
    p.set_condition(lifecycle.STABLE, False, "RollingBack", why)
    restore = p.r.restorePath or "empty state"
    p.event(WARNING, "RollingBack", f"{why}: rolling back to the last stable spec from {restore}")
    stable = lifecycle.deployed_spec(p.status)
    assert stable is not None
    redeploy.stop_job(p, stable)


def deploy_timed_out(p: context.Pass, spec: models.StreamJobSpec) -> bool:
    """A deployment stuck before its job runs counts against stability.timeout too."""
    deployed_at = p.r.deployedAt
    if deployed_at is None or p.r.state is State.ROLLING_BACK:
        return False
    deadline = clock.parse_time(deployed_at) + clock.duration(spec.stability.timeout)
    if p.now < deadline:
        p.soon(deadline)
        return False
    why = (
        f"not running {spec.stability.timeout} after its deployment began"
        f" (still at step {p.r.step})"
    )
    if p.r.state is State.UPGRADING and can_roll_back(p):
        start_rollback(p, why)
        return rolling_back(p)
    if not lifecycle.stability_failed(p.status):
        p.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, why)
        p.error(f"{why}: fix the spec and apply it", "StabilityTimeout")
    else:
        p.errors.append(why)
    return False
