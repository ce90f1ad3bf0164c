"""``plan(observed, spec, status, now) -> Plan``: one reconcile pass's decisions.

A pass, in order:

1. Record what was observed of the job (state, restarts, latest checkpoint).
2. A StreamJob being deleted is stopped (with a final savepoint when configured,
   bounded in time) and then let go; nothing else happens (``deletion``).
3. Settle the pending savepoint, if any (``savepoints.settle``): completed (recorded
   in the history), failed, timed out, or unknown to the JobManager: then, while the
   job runs, the request is sent again under the trigger id status recorded before it
   was first sent (the operator may have stopped in between; a repeat of an id the
   JobManager knows starts nothing), else it is lost.
4. Validate the spec. An invalid spec is reported (status error, ``SpecValid``
   condition, one Event) and not acted on: the last valid spec keeps running.
5. With a redeploy under way (``reconciliation.step``), carry it on (a newer spec
   replaces its target until the old job is asked to stop, or until the new job is
   submitted, ``redeploy.retarget`` and ``redeploy.retarget_deploy``); otherwise
   compare the spec with the last reconciled one and start what the change needs
   (``upgrade``), or look after the running job (``running``): job failures, the
   stability gate and rollback (``rollback``), manual and periodic savepoints.
6. Apply savepoint history retention, derive the lifecycle state and conditions.

Each concern is a module of functions over the pass (``context.Pass``: the inputs,
and the actions, errors and wake-up time gathered so far); this module only orders
them.

A redeploy walks ``steps.ORDER``: stop the job (stop-with-savepoint, or cancel) and
choose the restore path (``restore``); delete the JobManager and TaskManager Deployments and the
HA metadata; apply the new children; submit the job (``redeploy``). Each step is written to status
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

import datetime
from collections.abc import Mapping
from typing import Any

from streamjob_operator.api import models
from streamjob_operator.planning import (
    actions,
    bluegreen,
    clock,
    configuration,
    context,
    deletion,
    lifecycle,
    observed,
    recovery,
    redeploy,
    rollback,
    running,
    savepoints,
    steps,
    upgrade,
    validation,
)

Step = steps.Step


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


class _Pass(context.Pass):
    def run(self, raw: Mapping[str, Any]) -> actions.Plan:
        self.observe_job()
        if self.seen.meta.deletion_timestamp is not None:
            deletion.delete(self, self.seen.meta.deletion_timestamp)
            return self.finish()
        savepoints.settle(self)
        valid = self.validate(raw)
        if self.r.step is not None:
            self.continue_redeploy(valid)
        else:
            upgrade.reconcile(self, valid)
        savepoints.retain(self)
        running.ready_condition(self)
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

    def continue_redeploy(self, valid: models.StreamJobSpec | None) -> None:
        assert self.r.step is not None
        step = Step(self.r.step)
        spec = lifecycle.deployed_spec(self.status)
        assert spec is not None, "a step is under way without a target spec"
        if bluegreen.is_step(step):
            bluegreen.BlueGreen(self).carry_on(spec, valid)
        elif step is Step.RECOVER_JOB:
            recovery.carry_on(self, spec)
        elif step is Step.STOP_JOB:
            spec = redeploy.retarget(self, spec, valid)
            redeploy.stop_job(self, spec)
        elif step is Step.DELETE_DEPLOYMENTS:
            redeploy.delete_deployments(self, spec)
        elif redeploy.retarget_deploy(self, spec, valid):
            return  # a newer spec replaced the deployment's target
        elif rollback.deploy_timed_out(self, spec):
            return
        elif step is Step.APPLY_CHILDREN:
            redeploy.apply_children(self, spec)
        else:
            redeploy.submit(self, spec)

    # -- the decisions blue-green's step machine calls back into -----------------------------

    def can_roll_back(self) -> bool:
        return rollback.can_roll_back(self)

    def start_redeploy(self, spec: models.StreamJobSpec, why: str) -> None:
        upgrade.start_redeploy(self, spec, why)

    def stop_job(
        self,
        spec: models.StreamJobSpec,
        step: Step = Step.STOP_JOB,
        then: bluegreen.Then | None = None,
    ) -> None:
        redeploy.stop_job(self, spec, step, then)
