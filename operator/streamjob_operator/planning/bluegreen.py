"""Blue-green upgrades: the new colour comes up next to the old one, warm, before the switch.

Each colour (``blue``, ``green``) is a cluster of its own (``desired.target``: names,
HA cluster id, Lease, HA ConfigMap); ``recreate`` runs one uncoloured cluster.
``status.blueGreen.active`` says which cluster runs the job (null: the uncoloured
one), ``next`` the other colour while an upgrade or its fallback is under way.

An upgrade, restart or rescale of a StreamJob whose new spec says ``blueGreen`` walks
``steps.BLUE_GREEN_ORDER``, each step written to status before its action:

1. ``deploy-next``: the next colour's children with the new spec, and no job. Wait
   until its Deployments are ready, its JobManager answers and its TaskManagers
   registered ``job.parallelism`` slots. Its HA metadata is deleted while its
   JobManager is absent, so it never recovers a job from an earlier life of that colour.
   A newer blueGreen spec applied before the old job is asked to stop (here, or at
   ``stop-active`` while the old job still runs with no stop in flight) retargets the
   upgrade: the warm-up starts again with it. Once the stop is under way, a newer spec
   waits for the end of this upgrade.
2. ``stop-active``: the old job stops as ``recreate`` stops it (stop-with-savepoint
   with ``savepoint``, cancel with ``last-state`` and ``stateless``) and the restore
   path is chosen as there. Nothing is scheduled from here on: the downtime is the
   savepoint plus the restore.
3. ``submit-next``: submit to the next colour from that path; adopt the job its
   JobManager then lists (not one of ``previousJobs``, recorded before submitting).
4. ``await-stable``: the stability gate of ``recreate`` (``planning.stability``), from
   the submission, while the old colour stays up.
5. ``remove-previous``: the old colour's children and HA metadata go; once its
   Deployments are gone ``active`` flips.

If the new colour does not become stable within ``stability.timeout`` (from the
submission; the warm-up has its own ``stability.timeout`` from ``deploy-next``), or
its job fails for good, the upgrade falls back when ``rollback.enabled`` (the one
rollback switch for both strategies) and the old colour runs the last stable spec
(``blueGreen.fallback``, noted when the upgrade started): ``stop-next`` cancels the new
job, ``submit-active`` resubmits the last stable spec to the old colour, still warm,
from the same restore path, ``remove-next`` removes the new colour, and the StreamJob
is ROLLED_BACK. A warm-up that times out falls back without stopping anything: the
old job never stopped. Without a fallback the upgrade is not stable: the new colour
stays (the old one is removed, as ``recreate`` would have) and status says to fix the
spec; a warm-up that times out then keeps waiting, the old job running, until a new
spec retargets it.

Strategy switches take effect at the next redeploy: from ``recreate`` the upgrade
brings up blue next to the uncoloured cluster and removes that; to ``recreate`` the
redeploy stops the colour's job, deletes its cluster and deploys the uncoloured one.
A switch made while suspended takes effect at the resume, which deletes the cluster it
was suspended on (all its children and HA metadata) before deploying the new one.
Suspend, resume and a first deployment deploy in place (``recreate``'s steps) on the
active colour (blue at first). Deleting a StreamJob stops the job where it runs; both
colours' pods go with their owner, and both colours' HA metadata is deleted.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Protocol

from streamjob_operator.api import models
from streamjob_operator.desired import submission, target
from streamjob_operator.planning import (
    actions,
    changes,
    clock,
    configuration,
    lifecycle,
    observed,
    stability,
    steps,
    validation,
)
from streamjob_runtime.api import models as rest

Color = target.Color
Step = steps.Step
State = models.ReconciliationState
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


# -- where things run (pure functions of status) ---------------------------------------------


def color(text: str | None) -> Color | None:
    return None if text is None else Color(text)


def name(which: Color | None) -> str:
    return "uncoloured" if which is None else which.value


def uses(spec: models.StreamJobSpec) -> bool:
    return spec.upgradeStrategy.type is models.UpgradeStrategyType.BLUE_GREEN


def other_color(active: Color | None) -> Color:
    return Color.GREEN if active is Color.BLUE else Color.BLUE


def _step(status: models.StreamJobStatus) -> Step | None:
    step = status.reconciliation.step
    return None if step is None else Step(step)


def job_color(status: models.StreamJobStatus) -> Color | None:
    """The colour whose cluster runs (or is about to run) ``status.job``."""
    bg = status.blueGreen
    if bg is None:
        return None
    if bg.next is not None and _step(status) in steps.ON_NEXT:
        return color(bg.next)
    return color(bg.active)


def job_target(status: models.StreamJobStatus) -> target.DeploymentTarget:
    return target.DeploymentTarget(color=job_color(status))


def other_target(status: models.StreamJobStatus) -> target.DeploymentTarget | None:
    """During a blue-green upgrade or fallback, the cluster that does not run ``status.job``."""
    bg = status.blueGreen
    if bg is None or bg.next is None:
        return None
    here = job_color(status)
    there = color(bg.active) if here == color(bg.next) else color(bg.next)
    return target.DeploymentTarget(color=there)


def deploy_color(spec: models.StreamJobSpec, status: models.StreamJobStatus) -> Color | None:
    """Where a redeploy in place of ``spec`` goes: the active colour (blue when there is
    none) with ``blueGreen``, the uncoloured cluster with ``recreate``."""
    if not uses(spec):
        return None
    active = None if status.blueGreen is None else color(status.blueGreen.active)
    return active or Color.BLUE


def is_step(step: str | None) -> bool:
    return step is not None and Step(step) in (*steps.BLUE_GREEN_ORDER, *steps.FALLBACK_ORDER)


# -- the step machine ----------------------------------------------------------------------


class Host(Protocol):
    """What the step machine uses of the planner's pass (``context.Pass``)."""

    seen: observed.Observed
    status: models.StreamJobStatus
    now: datetime.datetime
    config: configuration.OperatorConfiguration
    errors: list[str]
    stopped_with: str | None

    @property
    def r(self) -> models.Reconciliation: ...
    def emit(self, action: actions.Action) -> None: ...
    def event(self, kind: actions.EventType, reason: str, message: str) -> None: ...
    def write(self) -> None: ...
    def soon(self, at: datetime.datetime | None = None) -> None: ...
    def soon_answer(self) -> None: ...
    def error(self, message: str, reason: str | None = None) -> None: ...
    def set_condition(
        self, kind: str, value: bool | None, reason: str, message: str = ""
    ) -> None: ...
    def streamjob(self, spec: models.StreamJobSpec) -> target.StreamJob: ...
    def refused(self, job: rest.JobSubmission, advice: str = ...) -> bool: ...
    def awaiting_deletion(self, what: str) -> None: ...
    def can_roll_back(self) -> bool: ...
    def start_redeploy(self, spec: models.StreamJobSpec, why: str) -> None: ...
    def stop_job(
        self, spec: models.StreamJobSpec, step: Step = ..., then: Then | None = None
    ) -> None: ...


Then = Callable[[models.StreamJobSpec, str | None], None]
"""What follows a stopped job, given the spec and the chosen restore path."""


class BlueGreen:
    """The blue-green steps of one pass (see the module doc)."""

    def __init__(self, p: Host) -> None:
        self.p = p

    @property
    def bg(self) -> models.BlueGreenStatus:
        bg = self.p.status.blueGreen
        assert bg is not None, "a blue-green step without status.blueGreen"
        assert bg.next is not None, "a blue-green step without a next colour"
        return bg

    def active(self) -> target.DeploymentTarget:
        return target.DeploymentTarget(color=color(self.bg.active))

    def next(self, restore: str | None = None) -> target.DeploymentTarget:
        return target.DeploymentTarget(color=color(self.bg.next), savepoint_path=restore)

    # -- starting and carrying on ------------------------------------------------------------

    def start(self, spec: models.StreamJobSpec, why: str) -> None:
        """An upgrade (restart, rescale) of the running job to ``spec`` begins."""
        r = self.p.r
        fallback = lifecycle.deployed_spec_text(self.p.status) == r.lastStableSpec
        active = None if self.p.status.blueGreen is None else self.p.status.blueGreen.active
        upcoming = other_color(color(active))
        self.p.start_redeploy(spec, f"{why}; blue-green to the {upcoming.value} cluster")
        self.p.status.blueGreen = models.BlueGreenStatus(
            active=active, next=upcoming.value, fallback=fallback
        )
        self.deploy_next(spec)

    def carry_on(self, spec: models.StreamJobSpec, valid: models.StreamJobSpec | None) -> None:
        step = Step(self.p.r.step or "")
        if step in (Step.DEPLOY_NEXT, Step.STOP_ACTIVE):
            target_spec = self.retarget(spec, valid)
            if target_spec is not spec:
                self.deploy_next(target_spec, retargeted=True)
            elif step is Step.DEPLOY_NEXT:
                self.deploy_next(spec)
            else:
                self.stop_active(spec)
        elif step is Step.SUBMIT_NEXT:
            if not self.failed_in_time(spec):
                self.submit(spec, self.p.r.restorePath)
        elif step is Step.AWAIT_STABLE:
            self.await_stable(spec)
        elif step is Step.REMOVE_PREVIOUS:
            self.remove_previous()
        elif step is Step.STOP_NEXT:
            self.p.stop_job(spec, Step.STOP_NEXT, self.submit)
        elif step is Step.SUBMIT_ACTIVE:
            self.submit(spec, self.p.r.restorePath)
        else:
            self.remove_next()

    def retarget(
        self, spec: models.StreamJobSpec, valid: models.StreamJobSpec | None
    ) -> models.StreamJobSpec:
        """Before the old job is asked to stop, a newer blueGreen spec replaces the target:
        the warm-up starts again with it (the next colour applied with the new spec).

        At ``stop-active`` that is while the old job still runs with no stop in flight
        (a stop-with-savepoint that failed, an upgrade blocked for want of state, an
        operator stopped before the request): the next colour runs the spec it was applied
        with, and the submission must match it. Once the stop is under way (a pending or
        completed savepoint, a cancel requested as status records it, a cancelled job),
        the new spec waits for the end of this
        upgrade, and so does a spec back to recreate, a suspend or a resume."""
        r = self.p.r
        if (
            valid is None
            or not uses(valid)
            or self.p.status.pendingSavepoint is not None
            or changes.encode(valid) == r.lastReconciledSpec
        ):
            return spec
        if r.step == Step.STOP_ACTIVE and (
            self.p.stopped_with is not None
            or not self.p.seen.job_running
            or (r.cancelRequested is not None and r.cancelRequested == self.p.status.job.id)
        ):
            return spec  # the old job is stopping or stopped: taken up once this is over
        kind = changes.classify(spec, valid).kind
        if kind in (changes.ChangeKind.SUSPEND, changes.ChangeKind.RESUME):
            return spec  # taken up once this upgrade is over
        with_state = valid.job.upgradeMode is not models.UpgradeMode.STATELESS
        errors = validation.transition_errors(spec, valid, with_state=with_state)
        if errors:
            self.p.error("cannot apply the new spec: " + "; ".join(errors), "InvalidChange")
            return spec
        r.lastReconciledSpec = changes.encode(valid)
        r.deployedAt = clock.format_time(self.p.now)
        self.p.set_condition(lifecycle.STABLE, None, "Redeploying", "retargeted")
        self.p.event(NORMAL, "Retargeted", "the upgrade under way now goes to the new spec")
        return valid

    # -- forward -----------------------------------------------------------------------------

    def deploy_next(self, spec: models.StreamJobSpec, retargeted: bool = False) -> None:
        """Step DEPLOY_NEXT: the next colour's children, warm; then stop the active job.

        Warm: its Deployments are ready at the generation last applied, its JobManager
        answers and its TaskManagers registered ``job.parallelism`` slots. A pass that
        ``retargeted`` applies the new spec and looks again next pass: what it observed
        are the pods of the spec before."""
        p = self.p
        if p.r.step != Step.DEPLOY_NEXT or retargeted:
            p.r.step = Step.DEPLOY_NEXT
            p.r.deployedAt = clock.format_time(p.now)
        view = p.seen.cluster(self.next().color)
        ready = observed.DeploymentState.READY
        warm = (
            not retargeted
            and view is not None
            and view.jobmanager is ready
            and view.taskmanager is ready
            and view.rest_reachable
            and (view.slots or 0) >= spec.job.parallelism
        )
        deadline = clock.parse_time(p.r.deployedAt or clock.format_time(p.now))
        deadline += clock.duration(spec.stability.timeout)
        why = "the new spec was just applied" if retargeted else self.warm_up_missing(spec, view)
        if not warm and p.now >= deadline:
            timeout = f"the {name(self.next().color)} cluster is not ready"
            timeout += f" {spec.stability.timeout} after it was deployed ({why});"
            timeout += " the old job keeps running"
            if self.can_fall_back():
                self.start_fallback(timeout)
                return
            if not lifecycle.stability_failed(p.status):
                p.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, timeout)
                p.error(f"{timeout}: fix the spec and apply it", "StabilityTimeout")
            else:
                p.errors.append(timeout)
        p.write()
        if view is None or view.jobmanager is observed.DeploymentState.ABSENT:
            # A warm JobManager would recover a job from an earlier life of this colour.
            p.emit(actions.DeleteHaMetadata(self.next()))
        p.emit(actions.ApplyChildren(p.streamjob(spec), self.next()))
        if warm:
            self.stop_active(spec)
            return
        if p.now < deadline:
            p.set_condition(lifecycle.STABLE, None, "Redeploying", why)
        p.soon()

    @staticmethod
    def warm_up_missing(spec: models.StreamJobSpec, view: observed.Cluster | None) -> str:
        ready = observed.DeploymentState.READY
        if view is None or ready not in (view.jobmanager, view.taskmanager):
            return "its Deployments are not ready yet"
        if view.jobmanager is not ready or view.taskmanager is not ready:
            which = "JobManager" if view.jobmanager is not ready else "TaskManager"
            return f"its {which} Deployment is not ready yet"
        if not view.rest_reachable:
            return "its JobManager does not answer yet"
        return f"its TaskManagers registered {view.slots or 0} of {spec.job.parallelism} slots"

    def stop_active(self, spec: models.StreamJobSpec) -> None:
        """Step STOP_ACTIVE: stop the old job as recreate does; then submit to the next."""
        self.p.stop_job(spec, Step.STOP_ACTIVE, self.submit)

    def submit(self, spec: models.StreamJobSpec, restore: str | None) -> None:
        """Step SUBMIT_NEXT (or SUBMIT_ACTIVE when falling back): submit once from
        ``restore``; adopt the job the JobManager lists that was not there before."""
        p = self.p
        forward = p.r.state is not State.ROLLING_BACK
        step = Step.SUBMIT_NEXT if forward else Step.SUBMIT_ACTIVE
        where = target.DeploymentTarget(
            color=(self.next() if forward else self.active()).color, savepoint_path=restore
        )
        if p.r.step != step:
            p.r.step = step
            p.r.restorePath = restore
            p.r.deployedAt = clock.format_time(p.now)
            p.status.job = models.JobInfo()
            p.status.lastCheckpoint = None
            p.status.lastPeriodicSavepointTime = None
            self.bg.previousJobs = None
        view = p.seen.cluster(where.color)
        known = self.bg.previousJobs
        if view is not None and view.rest_reachable and known is not None:
            fresh = [j for j in view.jobs if j.jid not in known]
            if fresh:
                self.adopt(max(fresh, key=lambda j: (not j.state.terminal, j.start_time)))
                return
        if view is not None and view.jobmanager is observed.DeploymentState.ABSENT:
            p.write()  # the JobManager went away: apply the colour again
            p.emit(actions.ApplyChildren(p.streamjob(spec), where))
            p.soon()
            return
        if view is None or not view.rest_reachable:
            p.write()
            p.soon()
            return
        if known is None:  # what it lists now is not ours to adopt
            self.bg.previousJobs = sorted(j.jid for j in view.jobs)
        job = submission.job_submission(p.streamjob(spec), where)
        if p.refused(job):
            return
        p.write()
        p.emit(actions.SubmitJob(job, where=where))
        p.soon_answer()

    def adopt(self, job: rest.JobOverview) -> None:
        p = self.p
        p.status.job = models.JobInfo(
            id=job.jid,
            state=job.state.value,
            startTime=clock.format_time(clock.from_epoch_ms(job.start_time)),
            restarts=job.restarts,
        )
        self.bg.previousJobs = None
        if p.r.state is State.ROLLING_BACK:
            p.event(
                NORMAL,
                "Resubmitted",
                f"job {job.jid} resubmitted to the {name(self.active().color)} cluster",
            )
            self.remove_next()
            return
        p.r.step = Step.AWAIT_STABLE
        p.set_condition(lifecycle.STABLE, None, lifecycle.STABILIZING, "the job was just submitted")
        p.event(
            NORMAL, "Deployed", f"job {job.jid} submitted to the {name(self.next().color)} cluster"
        )
        p.soon()

    def await_stable(self, spec: models.StreamJobSpec) -> None:
        """Step AWAIT_STABLE: the stability gate, the old colour still up."""
        p = self.p
        job_id = p.status.job.id
        known = any(j.jid == job_id for j in p.seen.jobs)
        if p.seen.rest_reachable and job_id is not None and p.seen.job is None and not known:
            self.not_stable(spec, f"its JobManager does not know job {job_id}")
            return
        if p.status.job.state == rest.JobStatus.FAILED.value:
            cause = p.seen.job.failure_cause if p.seen.job is not None else None
            self.not_stable(spec, f"its job failed: {cause or 'no cause reported'}")
            return
        verdict = stability.judge(spec, p.status, p.seen, p.now)
        if verdict.stable:
            p.r.lastStableSpec = p.r.lastReconciledSpec
            p.set_condition(lifecycle.STABLE, True, "Stable")
            p.event(NORMAL, "Stable", f"the {name(self.next().color)} cluster is stable")
            self.remove_previous()
            return
        if not verdict.timed_out:
            p.set_condition(lifecycle.STABLE, None, lifecycle.STABILIZING, verdict.why_not)
            if verdict.next_check is not None:
                p.soon(min(verdict.next_check, p.now + p.config.progress_check_interval))
            return
        self.not_stable(
            spec, f"not stable {spec.stability.timeout} after its submission: {verdict.why_not}"
        )

    def failed_in_time(self, spec: models.StreamJobSpec) -> bool:
        """A submission that does not happen within ``stability.timeout`` fails the upgrade."""
        deployed_at = self.p.r.deployedAt
        if deployed_at is None:
            return False
        deadline = clock.parse_time(deployed_at) + clock.duration(spec.stability.timeout)
        if self.p.now < deadline:
            self.p.soon(deadline)
            return False
        if not self.can_fall_back():
            return False  # nothing else to do: keep trying
        self.start_fallback(
            f"the job was not running on the {name(self.next().color)} cluster"
            f" {spec.stability.timeout} after the old one stopped"
        )
        return True

    def not_stable(self, spec: models.StreamJobSpec, why: str) -> None:
        p = self.p
        why = f"the {name(self.next().color)} cluster failed: {why}"
        if self.can_fall_back():
            self.start_fallback(why)
            return
        if p.can_roll_back():
            # The old colour does not run the last stable spec: the new colour becomes
            # active and the gate rolls back in place, as recreate does.
            p.event(WARNING, "NotStable", f"{why}: rolling back in place once it is active")
        else:
            next_step = (
                "rollback.enabled is off"
                if p.r.lastStableSpec is not None
                else "there is no stable spec to roll back to"
            )
            p.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, why)
            p.error(f"{why} ({next_step}): fix the spec and apply it", "StabilityTimeout")
        self.remove_previous()

    def removed(self, step: Step, where: target.DeploymentTarget) -> bool:
        """Record ``step``, delete ``where``'s cluster; True once its Deployments are gone."""
        p = self.p
        p.r.step = step
        p.write()
        p.emit(actions.DeleteChildren(where))
        view = p.seen.cluster(where.color)
        if view is None or not view.deployments_absent:
            p.awaiting_deletion(f"the {name(where.color)} cluster's Deployments")
            return False
        return True

    def remove_previous(self) -> None:
        """Step REMOVE_PREVIOUS: the old colour goes; then the new one is active."""
        p = self.p
        previous = self.active()
        if not self.removed(Step.REMOVE_PREVIOUS, previous):
            return
        upcoming = self.bg.next
        p.status.blueGreen = models.BlueGreenStatus(active=upcoming)
        p.r.step = None
        p.r.state = State.DEPLOYED
        p.event(
            NORMAL,
            "Switched",
            f"the {upcoming} cluster runs the job; the {name(previous.color)} cluster is removed",
        )
        p.soon()

    # -- falling back ------------------------------------------------------------------------

    def can_fall_back(self) -> bool:
        """rollback.enabled, the old colour runs the last stable spec, and (once the old job
        stopped) there is state to resubmit it from, or the upgrade was stateless."""
        p = self.p
        if not (self.bg.fallback and p.can_roll_back()):
            return False
        if p.r.step == Step.DEPLOY_NEXT:
            return True  # the old job still runs
        failed = changes.decode(p.r.lastReconciledSpec or "{}")
        stateless = failed.job.upgradeMode is models.UpgradeMode.STATELESS
        return p.r.restorePath is not None or stateless

    def start_fallback(self, why: str) -> None:
        p = self.p
        stopped = p.r.step != Step.DEPLOY_NEXT
        p.r.state = State.ROLLING_BACK
        p.set_condition(lifecycle.STABLE, False, "RollingBack", why)
        old = name(self.active().color)
        if not stopped:
            p.event(WARNING, "RollingBack", f"{why}: removing it, the {old} cluster stays")
            self.remove_next()
            return
        restore = p.r.restorePath or "empty state"
        p.event(
            WARNING,
            "RollingBack",
            f"{why}: resubmitting the last stable spec to the {old} cluster from {restore}",
        )
        stable = lifecycle.deployed_spec(p.status)
        assert stable is not None
        p.stop_job(stable, Step.STOP_NEXT, self.submit)

    def remove_next(self) -> None:
        """Step REMOVE_NEXT: the new colour goes; the old one runs the last stable spec."""
        p = self.p
        if not self.removed(Step.REMOVE_NEXT, self.next()):
            return
        old = self.active()
        p.status.blueGreen = models.BlueGreenStatus(active=self.bg.active)
        p.r.step = None
        p.r.state = State.ROLLED_BACK
        p.event(
            WARNING,
            "RolledBack",
            f"rolled back to the last stable spec on the {name(old.color)} cluster",
        )
        p.soon()
