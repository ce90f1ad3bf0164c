"""What a spec change starts while no redeploy is under way.

The first deployment; then, comparing the spec with the last reconciled one
(``changes.classify``): nothing, record it, a manual savepoint, resume, or a redeploy
(upgrade, restart, rescale, suspend), in place or blue-green (``bluegreen``). Without
a change the running job is looked after (``running``).
"""

from __future__ import annotations

from streamjob_operator.api import models
from streamjob_operator.planning import (
    actions,
    bluegreen,
    changes,
    context,
    lifecycle,
    redeploy,
    running,
    savepoints,
    validation,
)

State = models.ReconciliationState
Kind = actions.SavepointKind
Change = changes.ChangeKind
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def reconcile(p: context.Pass, valid: models.StreamJobSpec | None) -> None:
    if p.r.lastReconciledSpec is None:
        if valid is not None:
            first_deploy(p, valid)
        return
    current = lifecycle.deployed_spec(p.status)
    reconciled = changes.decode(p.r.lastReconciledSpec)
    if valid is not None and current is not None:
        change = changes.classify(reconciled, valid)
        if apply_change(p, change, current, valid):
            return
    if current is not None and current.job.state is models.DesiredJobState.RUNNING:
        running.look_after(p, current)


def first_deploy(p: context.Pass, spec: models.StreamJobSpec) -> None:
    p.r.lastReconciledSpec = changes.encode(spec)
    p.r.state = State.DEPLOYED
    p.r.restorePath = spec.job.initialSavepointPath
    if spec.job.state is models.DesiredJobState.SUSPENDED:
        p.event(NORMAL, "Suspended", "created suspended: nothing is deployed")
        return
    where = f"from savepoint {spec.job.initialSavepointPath}"
    p.event(
        NORMAL,
        "Deploying",
        f"first deployment, {where if spec.job.initialSavepointPath else 'empty state'}",
    )
    redeploy.apply_children(p, spec)


def record_spec(p: context.Pass, spec: models.StreamJobSpec) -> None:
    """Take ``spec`` as reconciled without a redeploy (STABLE stays STABLE)."""
    text = changes.encode(spec)
    was_stable = lifecycle.spec_stable(p.status)
    if was_stable and p.r.state is State.DEPLOYED:
        p.r.lastStableSpec = text
    p.r.lastReconciledSpec = text


def apply_change(
    p: context.Pass,
    change: changes.Change,
    current: models.StreamJobSpec,
    new: models.StreamJobSpec,
) -> bool:
    """Start what ``change`` needs; True when a redeploy started (nothing else to do)."""
    suspended = current.job.state is models.DesiredJobState.SUSPENDED
    kind = change.kind
    if kind is Change.NONE:
        return False
    if kind is Change.IGNORE or (suspended and kind is not Change.RESUME):
        record_spec(p, new)
        return False
    if kind is Change.SAVEPOINT:
        manual_savepoint(p, new)
        return False
    if kind is Change.RESUME:
        errors = validation.transition_errors(
            current, new, with_state=new.job.upgradeMode is not models.UpgradeMode.STATELESS
        )
        if errors:
            p.error("cannot resume: " + "; ".join(errors), "InvalidChange")
            return False
        start_redeploy(p, new, f"resuming ({', '.join(change.fields)})")
        if new.job.upgradeMode is models.UpgradeMode.STATELESS:
            p.r.restorePath = None
        if p.here.color != bluegreen.deploy_color(new, p.status):
            # The strategy changed while suspended: the cluster it was suspended on
            # (its Service, ConfigMap, RBAC, HA metadata) goes before the new one comes.
            redeploy.delete_deployments(p, new, restore=p.r.restorePath)
        else:
            redeploy.apply_children(p, new)
        return True
    with_state = new.job.upgradeMode is not models.UpgradeMode.STATELESS
    errors = validation.transition_errors(current, new, with_state=with_state)
    if errors:
        p.error(f"cannot apply the {kind.label}: " + "; ".join(errors), "InvalidChange")
        return False
    verb = "suspending" if kind is Change.SUSPEND else change.description
    if kind is not Change.SUSPEND and bluegreen.uses(new):
        bluegreen.BlueGreen(p).start(new, verb)
        return True
    start_redeploy(p, new, verb)
    redeploy.stop_job(p, new)
    return True


def start_redeploy(p: context.Pass, spec: models.StreamJobSpec, why: str) -> None:
    p.r.lastReconciledSpec = changes.encode(spec)
    p.r.state = State.UPGRADING
    p.set_condition(lifecycle.STABLE, None, "Redeploying", why)
    p.event(
        NORMAL,
        "Upgrading" if spec.job.state is models.DesiredJobState.RUNNING else "Suspending",
        f"{why}; upgrade mode {spec.job.upgradeMode.value}",
    )


def manual_savepoint(p: context.Pass, new: models.StreamJobSpec) -> None:
    nonce = new.job.savepointTriggerNonce
    if p.status.pendingSavepoint is not None:
        p.soon()  # one savepoint at a time: this one after the one in flight
    elif p.seen.job_running and not p.savepoint_failed:
        record_spec(p, new)
        savepoints.trigger(p, new, Kind.MANUAL, nonce)
    elif p.seen.job_alive or p.savepoint_failed:
        p.soon()  # restarting, or a savepoint just failed: try when it runs
    else:
        record_spec(p, new)
        p.event(
            WARNING,
            "SavepointSkipped",
            f"savepointTriggerNonce changed to {nonce}, but the job is not running"
            f" ({p.status.job.state or 'not deployed'}): no savepoint was taken; change"
            " the nonce again once the job runs",
        )
