"""``plan(observed, spec, status, now) -> Plan``: one reconcile pass's decisions.

A pass, in order:

1. Record what was observed of the job (state, restarts, latest checkpoint).
2. A StreamJob being deleted is stopped (with a final savepoint when configured,
   bounded in time) and then let go; nothing else happens.
3. Settle the pending savepoint, if any: completed (recorded in the history), failed,
   timed out, or unknown to the JobManager: then, while the job runs, the request is
   sent again under the trigger id status recorded before it was first sent (the
   operator may have stopped in between; a repeat of an id the JobManager knows starts
   nothing), else it is lost.
4. Validate the spec. An invalid spec is reported (status error, ``SpecValid``
   condition, one Event) and not acted on: the last valid spec keeps running.
5. With a redeploy under way (``reconciliation.step``), carry it on; otherwise
   compare the spec with the last reconciled one and start what the change needs,
   or look after the running job: job failures, the stability gate and rollback,
   manual and periodic savepoints.
6. Apply savepoint history retention, derive the lifecycle state and conditions.

A redeploy walks ``steps.ORDER``: stop the job (stop-with-savepoint, or cancel) and
choose the restore path; delete the JobManager and TaskManager Deployments and the
HA metadata; apply the new children; submit the job. Each step is written to status
(with the target spec and the restore path) before its destructive action, and a pass
moves through as many steps as the observation allows. A restarted operator finds the
step in status and carries on; the plan for a given observation and status is always
the same.

Upgrade modes: ``savepoint`` stops with a savepoint and restores from it; if the job
is not running, the latest checkpoint stands in only when it is younger than
``checkpointing.maxAge``, otherwise the upgrade stops and says why (the job is left
alone). ``last-state`` cancels the job and restores from its latest checkpoint (the
JobManager's, the HA metadata's or the last one status saw). ``stateless`` cancels
and starts from empty state. No upgrade falls back to empty state by itself.

With ``upgradeStrategy: blueGreen`` an upgrade, restart or rescale brings the new
spec up on the other colour's cluster first, warm, and only then stops the old job
and submits to it (``planning.bluegreen``, steps ``steps.BLUE_GREEN_ORDER``). A first
deployment, suspend and resume deploy in place, on the active colour; the cluster
that runs ``status.job`` (``bluegreen.job_target``) is where job actions go.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from streamjob_operator.api import models
from streamjob_operator.desired import jobmanager, submission, target
from streamjob_operator.planning import (
    actions,
    bluegreen,
    changes,
    clock,
    configuration,
    lifecycle,
    observed,
    savepoints,
    stability,
    steps,
    validation,
)
from streamjob_runtime.api import models as rest

Step = steps.Step
State = models.ReconciliationState
Kind = actions.SavepointKind
Change = changes.ChangeKind
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def plan(
    seen: observed.Observed,
    spec: Mapping[str, Any],
    status: models.StreamJobStatus,
    now: datetime.datetime,
    config: configuration.OperatorConfiguration | None = None,
) -> actions.Plan:
    """The actions of this pass and the status to record (see the module doc).

    ``spec`` is the StreamJob's spec as the API server holds it (unvalidated);
    ``status`` is not modified.
    """
    return _Pass(seen, status, now, config or configuration.OperatorConfiguration()).run(spec)


@dataclasses.dataclass(frozen=True)
class _Checkpoint:
    id: int
    path: str
    time: datetime.datetime | None


class _Pass:
    def __init__(
        self,
        seen: observed.Observed,
        status: models.StreamJobStatus,
        now: datetime.datetime,
        config: configuration.OperatorConfiguration,
    ) -> None:
        self.seen = seen
        self.before = status
        self.status = status.model_copy(deep=True)
        self.now = now
        self.config = config
        self.actions: list[actions.Action] = []
        self.errors: list[str] = []
        self.wake: datetime.datetime = now + config.reconcile_interval
        self.stopped_with: str | None = None  # a stop-with-savepoint completed this pass
        self.savepoint_failed = False  # a savepoint failed this pass: do not retrigger now

    # -- plumbing --------------------------------------------------------------------------

    @property
    def r(self) -> models.Reconciliation:
        return self.status.reconciliation

    def emit(self, action: actions.Action) -> None:
        self.actions.append(action)

    def event(self, kind: actions.EventType, reason: str, message: str) -> None:
        self.emit(actions.RecordEvent(kind, reason, message))

    def write(self) -> None:
        """Write status now (the write-ahead log entry for what follows)."""
        self.derive()
        self.emit(actions.WriteStatus(self.status.model_copy(deep=True)))

    def soon(self, at: datetime.datetime | None = None) -> None:
        """Look again at ``at``, or after the progress check interval."""
        at = at or self.now + self.config.progress_check_interval
        self.wake = min(self.wake, max(at, self.now))

    def error(self, message: str, reason: str | None = None) -> None:
        """Report ``message`` in status; and as an Event when it is new."""
        self.errors.append(message)
        if reason is not None and message not in (self.before.error or ""):
            self.event(WARNING, reason, message)

    def set_condition(self, kind: str, value: bool | None, reason: str, message: str = "") -> None:
        text = {True: "True", False: "False", None: "Unknown"}[value]
        old = lifecycle.condition(self.status, kind)
        since = old.lastTransitionTime if old is not None and old.status == text else None
        fresh = models.Condition(
            type=kind,
            status=text,
            reason=reason,
            message=message,
            lastTransitionTime=since or clock.format_time(self.now),
        )
        others = [c for c in self.status.conditions if c.type != kind]
        self.status.conditions = sorted([*others, fresh], key=lambda c: c.type)

    def derive(self) -> None:
        self.status.error = "; ".join(self.errors) or None
        self.r.observedGeneration = self.seen.meta.generation
        last = self.status.lastCheckpoint
        self.status.checkpointAge = None if last is None else clock.age(last.time, self.now)
        self.status.jobManager = self.jobmanager_status()
        self.status.lifecycleState = lifecycle.lifecycle_state(self.status)
        for derived in lifecycle.derived_conditions(self.status):
            self.set_condition(derived.type, derived.value, derived.reason, derived.message)

    def jobmanager_status(self) -> models.JobManagerStatus | None:
        """The web UI of the cluster that runs ``status.job``; None before a submission."""
        if self.status.job.id is None or self.r.lastReconciledSpec is None:
            return None
        job = self.streamjob(changes.decode(self.r.lastReconciledSpec))
        return models.JobManagerStatus(webUrl=jobmanager.web_url(job, self.here))

    def finish(self) -> actions.Plan:
        self.derive()
        if not any(isinstance(a, actions.FinishDeletion) for a in self.actions):
            seconds = max(1.0, (self.wake - self.now).total_seconds())
            self.emit(actions.RequeueAfter(seconds))
        return actions.Plan(tuple(self.actions), self.status)

    @property
    def here(self) -> target.DeploymentTarget:
        """The cluster of ``status.job``: where job actions go."""
        return bluegreen.job_target(self.status)

    def streamjob(self, spec: models.StreamJobSpec) -> target.StreamJob:
        meta = self.seen.meta
        return target.StreamJob(meta.name, meta.namespace, meta.uid, spec)

    # -- the pass --------------------------------------------------------------------------

    def run(self, raw: Mapping[str, Any]) -> actions.Plan:
        self.observe_job()
        if self.seen.meta.deletion_timestamp is not None:
            self.delete(self.seen.meta.deletion_timestamp)
            return self.finish()
        self.settle_savepoint()
        valid = self.validate(raw)
        if self.r.step is not None:
            self.continue_redeploy(valid)
        else:
            self.reconcile(valid)
        self.retain_savepoints()
        self.ready_condition()
        return self.finish()

    def observe_job(self) -> None:
        job = self.seen.job if self.seen.rest_reachable else None
        if job is None:
            return
        info = self.status.job
        same = job.jid == info.id
        restarts_before = info.restarts if same else 0
        restarted = job.restarts > restarts_before
        self.status.job = models.JobInfo(
            id=job.jid,
            state=job.state.value,
            startTime=clock.format_time(clock.from_epoch_ms(job.start_time)),
            restarts=job.restarts,
            lastRestartTime=(
                clock.format_time(self.now)
                if restarted
                else (info.lastRestartTime if same else None)
            ),
        )
        if not same:
            self.status.lastCheckpoint = None
        stats = self.seen.checkpoints
        latest = None if stats is None else stats.latest_completed
        if latest is not None:
            self.status.lastCheckpoint = models.CheckpointInfo(
                id=latest.id,
                path=latest.path,
                time=clock.format_time(clock.from_epoch_ms(latest.trigger_timestamp)),
            )

    def validate(self, raw: Mapping[str, Any]) -> models.StreamJobSpec | None:
        result = validation.validate(raw, allow_privileged=self.config.allow_privileged_pods)
        if result.spec is not None:
            self.set_condition(lifecycle.SPEC_VALID, True, "Valid")
            return result.spec
        message = "the spec is invalid, so the last valid spec keeps running: " + "; ".join(
            result.errors
        )
        if self.r.lastReconciledSpec is None:
            message = "the spec is invalid, so nothing was deployed: " + "; ".join(result.errors)
        self.error(message, "InvalidSpec")
        self.set_condition(lifecycle.SPEC_VALID, False, "InvalidSpec", "; ".join(result.errors))
        return None

    # -- savepoints ------------------------------------------------------------------------

    def savepoint_timeout(self) -> datetime.timedelta:
        spec = lifecycle.deployed_spec(self.status)
        timeout = clock.duration(spec.checkpointing.timeout) if spec else datetime.timedelta(0)
        return timeout + self.config.reconcile_interval

    def settle_savepoint(self) -> None:
        """Resolve ``status.pendingSavepoint`` from what the JobManager says of it."""
        pending = self.status.pendingSavepoint
        if pending is None:
            return
        info = self.seen.savepoint
        if info is not None and info.request_id != pending.triggerId:
            info = None
        kind = Kind(pending.triggerType)
        if info is not None and info.status is rest.SavepointStatus.COMPLETED:
            location = info.location or ""
            savepoints.record(self.status, kind.value, location, self.now, pending.nonce)
            self.status.pendingSavepoint = None
            self.event(NORMAL, "SavepointCompleted", f"{kind.value} savepoint {location}")
            if kind in savepoints.STOP_KINDS:
                self.stopped_with = location
            return
        if info is not None and info.status is rest.SavepointStatus.FAILED:
            self.savepoint_lost(f"failed: {info.failure_cause or 'no cause given'}")
            return
        triggered = clock.parse_time(pending.triggerTime)
        timed_out = self.now - triggered > self.savepoint_timeout()
        if pending.triggerId is None:
            # written by an operator that recorded the JobManager's id after the request
            self.savepoint_lost(
                "was not confirmed by the JobManager (the trigger failed, or the operator"
                " stopped before it could record the request)"
            )
        elif info is None and self.seen.rest_reachable:
            # The request never arrived (the operator stopped between recording its id
            # and sending it, or sending failed), or the JobManager forgot it (it
            # restarted). Sending it again under the same id is safe either way.
            running = self.seen.job_running and pending.jobId == self.status.job.id
            if running and not timed_out:
                self.write()
                self.request_savepoint(pending)
                self.soon()
            else:
                self.savepoint_lost(
                    f"request {pending.triggerId} is unknown to the JobManager (it restarted)"
                    + ("" if running else f" and job {pending.jobId} is not running")
                )
        elif timed_out:
            self.savepoint_lost(
                f"did not complete within {self.savepoint_timeout()} of its trigger at"
                f" {pending.triggerTime}"
            )
        else:
            self.soon()

    def savepoint_lost(self, why: str) -> None:
        pending = self.status.pendingSavepoint
        assert pending is not None
        self.status.pendingSavepoint = None
        self.savepoint_failed = True
        self.event(WARNING, "SavepointFailed", f"the {pending.triggerType} savepoint {why}")
        self.soon()

    def begin_savepoint(self, kind: Kind, nonce: int | None = None) -> models.PendingSavepoint:
        """Record a savepoint of the job about to be requested, with the trigger id the
        request will carry (write it before the request: the write-ahead log entry)."""
        job_id = self.status.job.id
        assert job_id is not None
        pending = models.PendingSavepoint(
            triggerId=savepoints.trigger_id(self.seen.meta.uid, job_id, kind, self.now),
            triggerType=kind.value,
            triggerTime=clock.format_time(self.now),
            nonce=nonce,
            jobId=job_id,
        )
        self.status.pendingSavepoint = pending
        self.soon()
        return pending

    def request_savepoint(self, pending: models.PendingSavepoint) -> None:
        """Ask the JobManager for ``pending`` under its trigger id: stop-with-savepoint for
        the kinds that stop the job, a savepoint for the others. Sent again after a crash
        or a failed send, the same id finds the request already started."""
        kind = Kind(pending.triggerType)
        spec = lifecycle.deployed_spec(self.status)
        directory = spec.savepoints.directory if spec is not None else None
        assert pending.jobId is not None
        assert pending.triggerId is not None
        if kind in savepoints.STOP_KINDS:
            self.emit(
                actions.StopWithSavepoint(
                    pending.jobId, kind, directory, pending.triggerId, where=self.here
                )
            )
        else:
            self.emit(
                actions.TriggerSavepoint(
                    pending.jobId, kind, directory, pending.triggerId, pending.nonce, self.here
                )
            )

    def trigger_savepoint(self, spec: models.StreamJobSpec, kind: Kind, nonce: int | None) -> None:
        pending = self.begin_savepoint(kind, nonce)
        if kind is Kind.PERIODIC:
            self.status.lastPeriodicSavepointTime = clock.format_time(self.now)
        self.write()
        self.request_savepoint(pending)

    def retain_savepoints(self) -> None:
        spec = lifecycle.deployed_spec(self.status)
        if spec is None:
            return
        kept = savepoints.retention(spec, self.status, self.now, self.seen.disposed)
        left = {e.location for e in self.status.savepointHistory} - {
            e.location for e in kept.history
        }
        self.status.savepointHistory = kept.history
        freed = len(left - self.seen.kept_files)  # the others had a SavepointNotDisposed
        if freed:
            self.event(NORMAL, "SavepointsDisposed", f"{freed} expired savepoint(s) disposed of")
        if kept.dispose:
            self.write()
            for location in kept.dispose:
                self.emit(actions.DisposeSavepoint(location))
            self.soon()

    # -- idle reconciliation ---------------------------------------------------------------

    def reconcile(self, valid: models.StreamJobSpec | None) -> None:
        if self.r.lastReconciledSpec is None:
            if valid is not None:
                self.first_deploy(valid)
            return
        current = lifecycle.deployed_spec(self.status)
        reconciled = changes.decode(self.r.lastReconciledSpec)
        if valid is not None and current is not None:
            change = changes.classify(reconciled, valid)
            if self.apply_change(change, current, valid):
                return
        if current is not None and current.job.state is models.DesiredJobState.RUNNING:
            self.look_after(current)

    def first_deploy(self, spec: models.StreamJobSpec) -> None:
        self.r.lastReconciledSpec = changes.encode(spec)
        self.r.state = State.DEPLOYED
        self.r.restorePath = spec.job.initialSavepointPath
        if spec.job.state is models.DesiredJobState.SUSPENDED:
            self.event(NORMAL, "Suspended", "created suspended: nothing is deployed")
            return
        where = f"from savepoint {spec.job.initialSavepointPath}"
        self.event(
            NORMAL,
            "Deploying",
            f"first deployment, {where if spec.job.initialSavepointPath else 'empty state'}",
        )
        self.apply_children(spec)

    def record_spec(self, spec: models.StreamJobSpec) -> None:
        """Take ``spec`` as reconciled without a redeploy (STABLE stays STABLE)."""
        text = changes.encode(spec)
        was_stable = self.r.lastStableSpec == self.r.lastReconciledSpec
        if was_stable and self.r.state is State.DEPLOYED:
            self.r.lastStableSpec = text
        self.r.lastReconciledSpec = text

    def apply_change(
        self,
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
            self.record_spec(new)
            return False
        if kind is Change.SAVEPOINT:
            self.manual_savepoint(new)
            return False
        if kind is Change.RESUME:
            errors = validation.transition_errors(
                current, new, with_state=new.job.upgradeMode is not models.UpgradeMode.STATELESS
            )
            if errors:
                self.error("cannot resume: " + "; ".join(errors), "InvalidChange")
                return False
            self.start_redeploy(new, f"resuming ({', '.join(change.fields)})")
            if new.job.upgradeMode is models.UpgradeMode.STATELESS:
                self.r.restorePath = None
            if self.here.color != bluegreen.deploy_color(new, self.status):
                # The strategy changed while suspended: the cluster it was suspended on
                # (its Service, ConfigMap, RBAC, HA metadata) goes before the new one comes.
                self.delete_deployments(new, restore=self.r.restorePath)
            else:
                self.apply_children(new)
            return True
        with_state = new.job.upgradeMode is not models.UpgradeMode.STATELESS
        errors = validation.transition_errors(current, new, with_state=with_state)
        if errors:
            self.error(f"cannot apply the {kind.label}: " + "; ".join(errors), "InvalidChange")
            return False
        verb = "suspending" if kind is Change.SUSPEND else change.description
        if kind is not Change.SUSPEND and bluegreen.uses(new):
            bluegreen.BlueGreen(self).start(new, verb)
            return True
        self.start_redeploy(new, verb)
        self.stop_job(new)
        return True

    def start_redeploy(self, spec: models.StreamJobSpec, why: str) -> None:
        self.r.lastReconciledSpec = changes.encode(spec)
        self.r.state = State.UPGRADING
        self.set_condition(lifecycle.STABLE, None, "Redeploying", why)
        self.event(
            NORMAL,
            "Upgrading" if spec.job.state is models.DesiredJobState.RUNNING else "Suspending",
            f"{why}; upgrade mode {spec.job.upgradeMode.value}",
        )

    def manual_savepoint(self, new: models.StreamJobSpec) -> None:
        nonce = new.job.savepointTriggerNonce
        if self.status.pendingSavepoint is not None:
            self.soon()  # one savepoint at a time: this one after the one in flight
        elif self.seen.job_running and not self.savepoint_failed:
            self.record_spec(new)
            self.trigger_savepoint(new, Kind.MANUAL, nonce)
        elif self.seen.job_alive or self.savepoint_failed:
            self.soon()  # restarting, or a savepoint just failed: try when it runs
        else:
            self.record_spec(new)
            self.event(
                WARNING,
                "SavepointSkipped",
                f"savepointTriggerNonce changed to {nonce}, but the job is not running"
                f" ({self.status.job.state or 'not deployed'}): no savepoint was taken; change"
                " the nonce again once the job runs",
            )

    def look_after(self, spec: models.StreamJobSpec) -> None:
        """The running deployment: lost children or job, failed job, stability, periodic
        savepoints."""
        missing = [
            name
            for name, state in (
                ("JobManager", self.seen.jobmanager),
                ("TaskManager", self.seen.taskmanager),
            )
            if state is observed.DeploymentState.ABSENT
        ]
        if missing:
            # Someone deleted them: apply them again. With HA the new JobManager recovers
            # the job from the HA metadata; without, the job is lost (reported next pass).
            self.event(
                WARNING,
                "ChildrenMissing",
                f"the {' and '.join(missing)} Deployment is missing: applying it again",
            )
            self.write()
            where = dataclasses.replace(self.here, savepoint_path=self.r.restorePath)
            self.emit(actions.ApplyChildren(self.streamjob(spec), where))
            self.soon()
            return
        if self.job_lost():
            self.error(
                f"the JobManager does not know job {self.status.job.id} (it restarted without"
                " high availability?): change job.restartNonce to start the job again from its"
                " latest state",
                "JobLost",
            )
            return
        if self.status.job.state == rest.JobStatus.FAILED.value:
            if self.rollback_due():
                self.start_rollback("its job failed before the deployment was stable")
                return
            cause = self.seen.job.failure_cause if self.seen.job is not None else None
            self.error(
                f"job {self.status.job.id} failed: {cause or 'no cause reported'}; fix the spec"
                " and apply it, or change job.restartNonce to restart from the latest state",
                "JobFailed",
            )
            return
        if self.gate(spec):
            return
        self.periodic_savepoint(spec)
        if self.seen.job_running:  # its checkpoints complete: keep lastCheckpoint fresh
            checkpoints = clock.duration(spec.checkpointing.interval)
            self.soon(self.now + max(checkpoints, self.config.checkpoint_status_interval))

    def can_roll_back(self) -> bool:
        """Whether the deployment of ``lastReconciledSpec`` may go back to the last stable
        spec: there is one, it is another spec, and the new spec enables rollback."""
        r = self.r
        return (
            r.lastReconciledSpec is not None
            and r.lastStableSpec is not None
            and r.lastStableSpec != r.lastReconciledSpec
            and changes.decode(r.lastReconciledSpec).rollback.enabled
        )

    def rollback_due(self) -> bool:
        """Whether this deployed, not yet stable, deployment may be rolled back."""
        return self.r.state is State.DEPLOYED and self.can_roll_back()

    def rolling_back(self) -> bool:
        return self.r.state is State.ROLLING_BACK

    def job_lost(self) -> bool:
        job_id = self.status.job.id
        return (
            self.seen.rest_reachable
            and job_id is not None
            and self.seen.job is None
            and all(j.jid != job_id for j in self.seen.jobs)
        )

    def gate(self, spec: models.StreamJobSpec) -> bool:
        """The stability gate; True when a rollback started."""
        r = self.r
        if r.state is not State.DEPLOYED or r.lastStableSpec == r.lastReconciledSpec:
            return False
        verdict = stability.judge(spec, self.status, self.seen, self.now)
        if verdict.stable:
            r.lastStableSpec = r.lastReconciledSpec
            self.set_condition(lifecycle.STABLE, True, "Stable")
            self.event(NORMAL, "Stable", "the deployment is stable")
            return False
        if not verdict.timed_out:
            self.set_condition(lifecycle.STABLE, None, "Stabilizing", verdict.why_not)
            if verdict.next_check is not None:
                self.soon(min(verdict.next_check, self.now + self.config.progress_check_interval))
            return False
        why = f"not stable {spec.stability.timeout} after its deployment: {verdict.why_not}"
        if self.rollback_due():
            self.start_rollback(why)
            return True
        if lifecycle.stability_failed(self.status):
            self.errors.append(why)
            return False
        next_step = (
            "rollback.enabled is off"
            if r.lastStableSpec is not None
            else "there is no stable spec to roll back to"
        )
        self.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, why)
        self.error(f"{why} ({next_step}): fix the spec and apply it", "StabilityTimeout")
        return False

    def start_rollback(self, why: str) -> None:
        failed = changes.decode(self.r.lastReconciledSpec or "{}")
        if (
            self.r.restorePath is None
            and failed.job.upgradeMode is not models.UpgradeMode.STATELESS
        ):
            message = (
                f"{why}; it cannot be rolled back: no savepoint was taken for the upgrade. Fix"
                " the spec and apply it"
            )
            self.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, message)
            self.error(message, "RollbackImpossible")
            return
        self.r.state = State.ROLLING_BACK
        self.set_condition(lifecycle.STABLE, False, "RollingBack", why)
        restore = self.r.restorePath or "empty state"
        self.event(
            WARNING, "RollingBack", f"{why}: rolling back to the last stable spec from {restore}"
        )
        stable = lifecycle.deployed_spec(self.status)
        assert stable is not None
        self.stop_job(stable)

    def periodic_savepoint(self, spec: models.StreamJobSpec) -> None:
        due = savepoints.next_periodic(spec, self.status)
        if due is None or self.status.pendingSavepoint is not None:
            return
        if due > self.now:
            self.soon(due)
        elif self.seen.job_running and not self.savepoint_failed:
            self.trigger_savepoint(spec, Kind.PERIODIC, None)
        else:
            self.soon()

    def ready_condition(self) -> None:
        state = self.status.job.state
        if self.seen.job_running:
            self.set_condition(lifecycle.READY, True, "JobRunning")
        else:
            reason = "NoJob" if state is None else f"Job{state.title()}"
            self.set_condition(lifecycle.READY, False, reason)

    # -- redeploys ---------------------------------------------------------------------------

    def continue_redeploy(self, valid: models.StreamJobSpec | None) -> None:
        assert self.r.step is not None
        step = Step(self.r.step)
        spec = lifecycle.deployed_spec(self.status)
        assert spec is not None, "a step is under way without a target spec"
        if bluegreen.is_step(step):
            bluegreen.BlueGreen(self).carry_on(spec, valid)
        elif step is Step.STOP_JOB:
            spec = self.retarget(spec, valid)
            self.stop_job(spec)
        elif step is Step.DELETE_DEPLOYMENTS:
            self.delete_deployments(spec)
        elif step is Step.APPLY_CHILDREN:
            if not self.deploy_timed_out(spec):
                self.apply_children(spec)
        else:
            if not self.deploy_timed_out(spec):
                self.submit(spec)

    def retarget(
        self, spec: models.StreamJobSpec, valid: models.StreamJobSpec | None
    ) -> models.StreamJobSpec:
        """Before the old job is gone, a newer spec replaces the target (e.g. to unblock
        an upgrade that found no usable state by switching to stateless)."""
        if (
            valid is None
            or self.r.state is not State.UPGRADING
            or self.status.pendingSavepoint is not None
            or changes.encode(valid) == self.r.lastReconciledSpec
        ):
            return spec
        mode = valid.job.upgradeMode
        errors = validation.transition_errors(
            spec, valid, with_state=mode is not models.UpgradeMode.STATELESS
        )
        if errors:
            self.error("cannot apply the new spec: " + "; ".join(errors), "InvalidChange")
            return spec
        self.r.lastReconciledSpec = changes.encode(valid)
        self.event(NORMAL, "Retargeted", "the upgrade under way now goes to the new spec")
        return valid

    def stop_job(
        self,
        spec: models.StreamJobSpec,
        step: Step = Step.STOP_JOB,
        then: bluegreen.Then | None = None,
    ) -> None:
        """Step STOP_JOB (or ``step``): stop the job of ``status.job`` and choose what the
        next one restores from; then ``then(spec, restore)``, by default the next step
        in place (delete the Deployments)."""
        self.r.step = step
        then = then or (lambda s, restore: self.delete_deployments(s, restore=restore))
        rolling_back = self.r.state is State.ROLLING_BACK
        mode = spec.job.upgradeMode
        with_savepoint = mode is models.UpgradeMode.SAVEPOINT and not rolling_back
        suspend = spec.job.state is models.DesiredJobState.SUSPENDED
        job_id = self.status.job.id
        if self.status.pendingSavepoint is not None:
            self.soon()  # a savepoint is in flight: the JobManager takes one at a time
            return
        if self.stopped_with is not None:
            then(spec, self.stopped_with)
            return
        if with_savepoint and self.seen.job_running and not self.savepoint_failed:
            assert job_id is not None
            pending = self.begin_savepoint(Kind.SUSPEND if suspend else Kind.UPGRADE)
            self.write()
            self.request_savepoint(pending)
            return
        if with_savepoint and self.seen.job_alive and self.savepoint_failed:
            self.soon()  # the failed stop restarts the job: take the savepoint when it runs
            return
        choice = self.choose_restore(spec, rolling_back)
        if isinstance(choice, _Blocked):
            self.error(choice.message, "UpgradeBlocked")
            return
        if self.seen.job_alive:
            assert job_id is not None
            self.write()
            self.emit(actions.CancelJob(job_id, self.here))
            self.soon()
            return
        if choice.note is not None:
            self.event(WARNING, "CheckpointFallback", choice.note)
        then(spec, choice.path)

    def latest_checkpoint(self) -> _Checkpoint | None:
        found: list[_Checkpoint] = []
        last = self.status.lastCheckpoint
        if last is not None:
            found.append(_Checkpoint(last.id, last.path, clock.parse_time(last.time)))
        ha = self.seen.ha_checkpoint
        if ha is not None and (last is None or ha.checkpoint_id > last.id):
            found.append(_Checkpoint(ha.checkpoint_id, ha.path, None))
        return max(found, key=lambda c: c.id, default=None)

    def choose_restore(self, spec: models.StreamJobSpec, rolling_back: bool) -> _Restore | _Blocked:
        """What the next job restores from, when no stop-with-savepoint is to be had."""
        mode = spec.job.upgradeMode
        purpose = "suspend" if spec.job.state is models.DesiredJobState.SUSPENDED else "upgrade"
        if rolling_back:
            return _Restore(self.r.restorePath)
        if mode is models.UpgradeMode.STATELESS:
            return _Restore(None)
        latest = self.latest_checkpoint()
        if mode is models.UpgradeMode.LAST_STATE:
            if latest is not None:
                return _Restore(latest.path)
            if self.r.restorePath is not None:
                return _Restore(self.r.restorePath)  # no checkpoint since it restored
            return _Blocked(
                f"cannot {purpose} with last-state: the job has no checkpoint to restore from;"
                " the job was left as it is. Wait for a checkpoint, or set job.upgradeMode:"
                " stateless to start from empty state"
            )
        job_state = self.status.job.state if self.seen.rest_reachable else "unreachable"
        head = (
            f"cannot {purpose} with a savepoint: the job is not running"
            f" ({job_state or 'not deployed'})"
        )
        tail = (
            "; the job was left as it is. Get the job running again, raise"
            " checkpointing.maxAge, or set job.upgradeMode: stateless to start from empty state"
        )
        max_age = spec.checkpointing.maxAge
        if max_age is None:
            return _Blocked(f"{head}, and checkpointing.maxAge is not set{tail}")
        if latest is None:
            return _Blocked(f"{head}, and it has no checkpoint{tail}")
        if latest.time is None:
            return _Blocked(f"{head}, and the age of checkpoint {latest.id} is unknown{tail}")
        age = self.now - latest.time
        if age > clock.duration(max_age):
            return _Blocked(
                f"{head}, and its latest checkpoint ({latest.id}, taken"
                f" {clock.format_time(latest.time)}) is older than checkpointing.maxAge"
                f" ({max_age}){tail}"
            )
        return _Restore(
            latest.path,
            f"the job is not running, so no savepoint can be taken: restoring from checkpoint"
            f" {latest.id} ({latest.path}), younger than checkpointing.maxAge ({max_age})",
        )

    def delete_deployments(self, spec: models.StreamJobSpec, restore: str | None = None) -> None:
        """Step DELETE_DEPLOYMENTS: the old JobManager, TaskManagers and HA metadata go.

        ``restore`` (what the next job restores from) is written on entering the step;
        a pass that resumes the step keeps the one in status.
        """
        if self.r.step != Step.DELETE_DEPLOYMENTS:
            self.r.step = Step.DELETE_DEPLOYMENTS
            self.r.restorePath = restore
        self.write()
        if self.here.color != bluegreen.deploy_color(spec, self.status):
            self.emit(actions.DeleteChildren(self.here))  # the strategy changed: all of it
        else:
            self.emit(actions.DeleteTaskManager(self.here))
            self.emit(actions.DeleteJobManager(self.here))
            self.emit(actions.DeleteHaMetadata(self.here))
        if not self.seen.deployments_absent:
            self.soon()
            return
        if spec.job.state is models.DesiredJobState.SUSPENDED:
            self.r.step = None
            self.r.state = State.DEPLOYED
            self.event(NORMAL, "Suspended", f"suspended; resumes from {self.r.restorePath}")
            return
        self.apply_children(spec)

    def apply_children(self, spec: models.StreamJobSpec) -> None:
        """Step APPLY_CHILDREN: the new children, then wait for the JobManager."""
        if self.r.step != Step.APPLY_CHILDREN:
            self.r.step = Step.APPLY_CHILDREN
            color = bluegreen.deploy_color(spec, self.status)
            self.status.blueGreen = (
                None if color is None else models.BlueGreenStatus(active=color.value)
            )
            self.r.deployedAt = clock.format_time(self.now)
            self.status.job = models.JobInfo()
            self.status.lastCheckpoint = None
            self.status.lastPeriodicSavepointTime = None
        self.write()
        where = dataclasses.replace(self.here, savepoint_path=self.r.restorePath)
        self.emit(actions.ApplyChildren(self.streamjob(spec), where))
        if self.seen.jobmanager is observed.DeploymentState.READY and self.seen.rest_reachable:
            self.submit(spec)
        else:
            self.soon()

    def submit(self, spec: models.StreamJobSpec) -> None:
        """Step SUBMIT_JOB: submit once; adopt the job the JobManager lists."""
        if self.seen.rest_reachable and self.seen.jobs:
            self.adopt(max(self.seen.jobs, key=lambda j: (not j.state.terminal, j.start_time)))
            return
        if self.seen.jobmanager is observed.DeploymentState.ABSENT:
            self.r.step = Step.APPLY_CHILDREN  # the JobManager went away: apply it again
            self.apply_children(spec)
            return
        if not self.seen.rest_reachable:
            self.soon()
            return
        self.r.step = Step.SUBMIT_JOB
        self.write()
        where = dataclasses.replace(self.here, savepoint_path=self.r.restorePath)
        job = submission.job_submission(self.streamjob(spec), where)
        self.emit(actions.SubmitJob(job, where))
        self.soon()

    def adopt(self, job: rest.JobOverview) -> None:
        self.status.job = models.JobInfo(
            id=job.jid,
            state=job.state.value,
            startTime=clock.format_time(clock.from_epoch_ms(job.start_time)),
            restarts=job.restarts,
        )
        rolled_back = self.r.state is State.ROLLING_BACK
        self.r.step = None
        self.r.state = State.ROLLED_BACK if rolled_back else State.DEPLOYED
        if rolled_back:
            self.event(WARNING, "RolledBack", f"rolled back to the last stable spec: job {job.jid}")
        else:
            self.set_condition(lifecycle.STABLE, None, "Stabilizing", "the job was just submitted")
            self.event(NORMAL, "Deployed", f"job {job.jid} submitted")
        self.soon()

    def deploy_timed_out(self, spec: models.StreamJobSpec) -> bool:
        """A deployment stuck before its job runs counts against stability.timeout too."""
        deployed_at = self.r.deployedAt
        if deployed_at is None or self.r.state is State.ROLLING_BACK:
            return False
        deadline = clock.parse_time(deployed_at) + clock.duration(spec.stability.timeout)
        if self.now < deadline:
            self.soon(deadline)
            return False
        why = (
            f"not running {spec.stability.timeout} after its deployment began"
            f" (still at step {self.r.step})"
        )
        if self.r.state is State.UPGRADING and self.can_roll_back():
            self.start_rollback(why)
            return self.rolling_back()
        if not lifecycle.stability_failed(self.status):
            self.set_condition(lifecycle.STABLE, False, lifecycle.STABILITY_TIMEOUT, why)
            self.error(f"{why}: fix the spec and apply it", "StabilityTimeout")
        else:
            self.errors.append(why)
        return False

    # -- deletion ----------------------------------------------------------------------------

    def delete(self, asked: datetime.datetime) -> None:
        """Stop the job (final savepoint if configured, bounded in time), then let go."""
        if self.r.state is not State.DELETING:
            self.r.state = State.DELETING
            self.event(NORMAL, "Deleting", "stopping the job before the StreamJob goes")
            bg = self.status.blueGreen
            if (
                bg is not None
                and bg.next is not None
                and self.here.color != bluegreen.color(bg.active)
            ):
                # The job runs on the next colour: from here on it is the active one.
                self.status.blueGreen = models.BlueGreenStatus(active=bg.next, next=bg.active)
        self.r.step = Step.STOP_JOB
        deadline = asked + self.config.deletion_savepoint_timeout
        self.settle_savepoint()
        spec = lifecycle.deployed_spec(self.status)
        job_id = self.status.job.id
        if self.seen.job_alive and job_id is not None:
            if self.status.pendingSavepoint is not None:
                if self.now < deadline:
                    self.soon(min(deadline, self.now + self.config.progress_check_interval))
                    return
                self.status.pendingSavepoint = None
                self.event(
                    WARNING,
                    "FinalSavepointTimedOut",
                    f"the savepoint did not complete by {clock.format_time(deadline)}"
                    f" ({self.config.deletion_savepoint_timeout} after the deletion): cancelling"
                    " the job without it",
                )
            elif (
                self.config.savepoint_on_deletion
                and spec is not None
                and spec.savepoints.directory is not None
                and self.seen.job_running
                and self.now < deadline
                and not self.savepoint_failed
            ):
                pending = self.begin_savepoint(Kind.DELETE)
                self.write()
                self.request_savepoint(pending)
                self.soon(min(deadline, self.now + self.config.progress_check_interval))
                return
            self.write()
            self.emit(actions.CancelJob(job_id, self.here))
            self.soon()
            return
        self.status.pendingSavepoint = None
        self.write()
        # HA metadata has no owner: each cluster this StreamJob may have run goes.
        clusters = [None] if self.status.blueGreen is None else [None, *target.Color]
        for color in clusters:
            self.emit(actions.DeleteHaMetadata(target.DeploymentTarget(color=color)))
        self.emit(actions.FinishDeletion())


@dataclasses.dataclass(frozen=True)
class _Restore:
    path: str | None
    note: str | None = None  # a warning to give once the old job is gone


@dataclasses.dataclass(frozen=True)
class _Blocked:
    message: str
