"""plan(observed, spec, status, now): table-driven cases, crash resumes, and the WAL invariant.

Each case is an observation, a spec and a status in, and the plan's actions (rendered
as short strings by :func:`summary`) and selected status fields out. The invariant
that a destructive action is always preceded by a WriteStatus recording the target
spec and step is checked on every case's plan.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.desired import target
from streamjob_operator.planning import (
    actions,
    bluegreen,
    changes,
    clock,
    configuration,
    lifecycle,
    observed,
    planner,
    savepoints,
    steps,
)
from streamjob_runtime.api import models as rest

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
META = observed.Meta("wordcount", "prod", "uid-1", generation=7)
READY = observed.DeploymentState.READY
ABSENT = observed.DeploymentState.ABSENT
PROGRESSING = observed.DeploymentState.PROGRESSING
Lifecycle = models.LifecycleState
State = models.ReconciliationState
Step = steps.Step


def ago(**delta: float) -> datetime.datetime:
    return NOW - datetime.timedelta(**delta)


def stamp(moment: datetime.datetime) -> str:
    return clock.format_time(moment)


def ms(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- specs ---------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "image": "streamjob:1",
    "job": {"entrypoint": "examples.wordcount", "parallelism": 2},
    "taskManager": {"replicas": 2},
    "savepoints": {"directory": "/state/savepoints"},
}


def raw(**patch: Any) -> dict[str, Any]:
    """BASE with ``section__field=value`` (or ``section=value``) patches."""
    spec: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for key, value in patch.items():
        head, _, leaf = key.partition("__")
        if leaf:
            spec.setdefault(head, {})[leaf] = value
        else:
            spec[head] = value
    return spec


def parsed(**patch: Any) -> models.StreamJobSpec:
    return models.StreamJobSpec.model_validate(raw(**patch))


def encoded(**patch: Any) -> str:
    return changes.encode(parsed(**patch))


# -- statuses ------------------------------------------------------------------------------


def status(
    spec: dict[str, Any] | None = None,
    *,
    stable: bool = True,
    state: State = State.DEPLOYED,
    step: Step | None = None,
    job_id: str | None = "j1",
    job_state: str | None = "RUNNING",
    restarts: int = 0,
    deployed: datetime.datetime | None = None,
    restore: str | None = None,
    last_checkpoint: tuple[int, str, datetime.datetime] | None = None,
    pending: models.PendingSavepoint | None = None,
    stable_spec: str | None = None,
    history: list[models.SavepointRecord] | None = None,
    last_savepoint: models.SavepointRecord | None = None,
    conditions: list[models.Condition] | None = None,
    error: str | None = None,
) -> models.StreamJobStatus:
    """A status that has reconciled ``spec`` (default: BASE)."""
    text = changes.encode(models.StreamJobSpec.model_validate(spec or raw()))
    result = models.StreamJobStatus(
        job=models.JobInfo(id=job_id, state=job_state, restarts=restarts),
        reconciliation=models.Reconciliation(
            lastReconciledSpec=text,
            lastStableSpec=stable_spec or _stable_default(text, state, stable),
            step=None if step is None else step.value,  # as status holds it: a plain string
            state=state,
            deployedAt=stamp(deployed or ago(hours=1)),
            restorePath=restore,
        ),
        pendingSavepoint=pending,
        savepointHistory=history or [],
        lastSavepoint=last_savepoint,
        conditions=conditions or [],
        error=error,
    )
    if last_checkpoint is not None:
        cid, path, when = last_checkpoint
        result.lastCheckpoint = models.CheckpointInfo(id=cid, path=path, time=stamp(when))
    return models.StreamJobStatus.model_validate_json(result.model_dump_json())


def _stable_default(text: str, state: State, stable: bool) -> str | None:
    """Upgrades go from BASE (stable); otherwise the reconciled spec, when ``stable``."""
    if state is State.UPGRADING:
        return encoded()
    return text if stable else None


def pending(kind: str, trigger_id: str | None = "t1", **fields: Any) -> models.PendingSavepoint:
    return models.PendingSavepoint(
        triggerId=trigger_id,
        triggerType=kind,
        triggerTime=stamp(fields.pop("at", ago(seconds=20))),
        jobId="j1",
        **fields,
    )


def record(
    location: str, when: datetime.datetime, kind: str = "periodic"
) -> models.SavepointRecord:
    return models.SavepointRecord(location=location, time=stamp(when), trigger=kind)


# -- observations --------------------------------------------------------------------------


def details(
    jid: str = "j1",
    state: rest.JobStatus = rest.JobStatus.RUNNING,
    restarts: int = 0,
    failure: str | None = None,
) -> rest.JobDetails:
    return rest.JobDetails(
        jid=jid,
        name="wordcount",
        state=state,
        start_time=ms(ago(hours=1)),
        end_time=None,
        duration_ms=3_600_000,
        restarts=restarts,
        attempt=restarts + 1,
        restored_from=None,
        failure_cause=failure,
        vertices=[],
    )


def stats(
    completed: int = 5, latest: tuple[int, datetime.datetime] | None = None
) -> rest.CheckpointingStatistics:
    info = None
    if latest is not None:
        cid, when = latest
        info = rest.CompletedCheckpointInfo(
            id=cid,
            path=f"/checkpoints/j1/chk-{cid}",
            trigger_timestamp=ms(when),
            duration_ms=10.0,
            bytes=100,
            alignment_ms=0.0,
        )
    return rest.CheckpointingStatistics(
        counts=rest.CheckpointCounts(completed=completed, failed=0, in_progress=0),
        latest_completed=info,
        history=[],
    )


def overview(jid: str, state: rest.JobStatus = rest.JobStatus.RUNNING) -> rest.JobOverview:
    return rest.JobOverview(jid=jid, name="wordcount", state=state, start_time=ms(NOW), restarts=0)


def savepoint(
    state: rest.SavepointStatus, location: str | None = None, trigger_id: str = "t1"
) -> rest.SavepointInfo:
    cause = "savepoint failed: declined" if state is rest.SavepointStatus.FAILED else None
    return rest.SavepointInfo(
        request_id=trigger_id, status=state, location=location, failure_cause=cause
    )


def seen(
    job: rest.JobDetails | None = None,
    *,
    reachable: bool = True,
    jm: observed.DeploymentState = READY,
    tm: observed.DeploymentState = READY,
    **fields: Any,
) -> observed.Observed:
    """A reachable JobManager running ``job`` (by default j1, RUNNING)."""
    if job is None and reachable and "jobs" not in fields:
        job = details()
    if job is not None and "jobs" not in fields:
        fields["jobs"] = (overview(job.jid, job.state),)
    return observed.Observed(
        meta=fields.pop("meta", META),
        jobmanager=jm,
        taskmanager=tm,
        rest_reachable=reachable,
        job=job if reachable else None,
        **fields,
    )


GONE = seen(reachable=False, jm=ABSENT, tm=ABSENT, jobs=())
EMPTY_JM = seen(jobs=())  # a fresh JobManager, reachable, no job yet


# -- rendering -----------------------------------------------------------------------------


def summary(plan: actions.Plan) -> list[str]:
    """The plan's actions as short strings (RequeueAfter left out)."""
    out = []
    for a in plan.actions:
        match a:
            case actions.WriteStatus(status=s):
                out.append(f"write {s.reconciliation.step or '-'}")
            case actions.ApplyChildren(where=w):
                out.append(f"apply {w.savepoint_path or '-'}")
            case actions.DeleteJobManager():
                out.append("delete jobmanager")
            case actions.DeleteTaskManager():
                out.append("delete taskmanager")
            case actions.DeleteHaMetadata():
                out.append("delete ha")
            case actions.SubmitJob(submission=sub):
                out.append(f"submit {sub.savepoint_path or '-'}")
            case actions.TriggerSavepoint(kind=kind, nonce=nonce):
                out.append(f"savepoint {kind.value}" + ("" if nonce is None else f" {nonce}"))
            case actions.StopWithSavepoint(job_id=jid, kind=kind):
                out.append(f"stop {jid} {kind.value}")
            case actions.CancelJob(job_id=jid):
                out.append(f"cancel {jid}")
            case actions.DisposeSavepoint(location=location):
                out.append(f"dispose {location}")
            case actions.RecordEvent(reason=reason):
                out.append(f"event {reason}")
            case actions.FinishDeletion():
                out.append("finish")
            case actions.RequeueAfter():
                pass
    return out


DELETES = ["delete taskmanager", "delete jobmanager", "delete ha"]


def check_write_ahead(plan: actions.Plan) -> None:
    """Every destructive action follows a WriteStatus that records the target and the step."""
    expected_step: dict[type[Any], set[str | None]] = {
        actions.StopWithSavepoint: {Step.STOP_JOB, Step.STOP_ACTIVE},
        actions.CancelJob: {Step.STOP_JOB, Step.STOP_ACTIVE, Step.STOP_NEXT},
        actions.DeleteTaskManager: {Step.DELETE_DEPLOYMENTS},
        actions.DeleteJobManager: {Step.DELETE_DEPLOYMENTS},
        # STOP_JOB: deleting; DEPLOY_NEXT: a stale record of the next colour
        actions.DeleteHaMetadata: {Step.DELETE_DEPLOYMENTS, Step.STOP_JOB, Step.DEPLOY_NEXT},
        actions.DeleteChildren: {
            Step.DELETE_DEPLOYMENTS,  # the strategy changed
            Step.REMOVE_PREVIOUS,
            Step.REMOVE_NEXT,
        },
        # None: re-applying missing ones; SUBMIT_*: a colour's JobManager went away
        actions.ApplyChildren: {
            Step.APPLY_CHILDREN,
            None,
            Step.DEPLOY_NEXT,
            Step.SUBMIT_NEXT,
            Step.SUBMIT_ACTIVE,
        },
        actions.DisposeSavepoint: {None, *Step},
    }
    target = lifecycle.deployed_spec_text(plan.status)
    last: actions.WriteStatus | None = None
    for action in plan.actions:
        if isinstance(action, actions.WriteStatus):
            last = action
        if isinstance(action, actions.DESTRUCTIVE):
            assert last is not None, f"{action} without a WriteStatus before it"
            written = last.status.reconciliation
            assert written.step in expected_step[type(action)], (action, written.step)
            assert lifecycle.deployed_spec_text(last.status) == target, action
            if isinstance(action, actions.StopWithSavepoint):
                assert last.status.pendingSavepoint is not None
            if (
                isinstance(action, actions.DeleteChildren)
                and written.step != Step.DELETE_DEPLOYMENTS
            ):
                # a blue-green step never removes the cluster status says the job is on
                assert action.where.color != bluegreen.job_color(last.status), action
        if isinstance(
            action,
            (
                actions.StopWithSavepoint,
                actions.TriggerSavepoint,
                actions.CancelJob,
                actions.SubmitJob,
            ),
        ):
            # job actions go to the cluster status says the job is on
            assert last is not None, f"{action} without a WriteStatus before it"
            assert action.where.color == bluegreen.job_color(last.status), (action, last.status)
        if isinstance(action, (actions.StopWithSavepoint, actions.TriggerSavepoint)):
            # the trigger id is in status before the request carries it
            assert last is not None, f"{action} without a WriteStatus before it"
            asked = last.status.pendingSavepoint
            assert asked is not None, action
            assert asked.triggerId == action.trigger_id, (asked, action)
            assert asked.jobId == action.job_id, (asked, action)


# -- the table -----------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    id: str
    seen: observed.Observed
    status: models.StreamJobStatus
    expected: list[str]
    spec: dict[str, Any] = dataclasses.field(default_factory=raw)
    lifecycle: Lifecycle | None = None
    step: Step | str | None = "same"  # "same": not checked
    restore: str | bool | None = False  # False: not checked
    error: str | None = None  # a fragment of status.error; "" checks there is none
    check: Callable[[actions.Plan], None] | None = None
    config: configuration.OperatorConfiguration = dataclasses.field(
        default_factory=configuration.OperatorConfiguration
    )


def check_case(case: Case) -> None:
    """Plan ``case`` and check what it expects (the ``test_plan`` of each table)."""
    result = planner.plan(case.seen, case.spec, case.status, NOW, case.config)
    assert summary(result) == case.expected
    check_write_ahead(result)
    new = result.status
    if case.lifecycle is not None:
        assert new.lifecycleState is case.lifecycle
    assert new.lifecycleState is lifecycle.lifecycle_state(new)
    if case.step != "same":
        assert new.reconciliation.step == case.step
    if case.restore is not False:
        assert new.reconciliation.restorePath == case.restore
    if case.error == "":
        assert new.error is None
    elif case.error is not None:
        assert new.error is not None
        assert case.error in new.error
    if case.check is not None:
        case.check(result)


EMPTY = models.StreamJobStatus()
SAVEPOINT_T1 = pending("upgrade")
SUSPENDED = raw(job__state="suspended")
LAST_STATE = raw(job__upgradeMode="last-state")
STATELESS = raw(job__upgradeMode="stateless")
ROLLBACK = raw(rollback={"enabled": True}, image="streamjob:2")
NEW_IMAGE = raw(image="streamjob:2")
MAX_AGE = raw(image="streamjob:2", checkpointing={"maxAge": "10m"})


UPGRADE = actions.SavepointKind.UPGRADE
MANUAL = actions.SavepointKind.MANUAL
UPGRADE_ID = savepoints.trigger_id(META.uid, "j1", UPGRADE, NOW)


def _sent(plan: actions.Plan, request: actions.Action) -> None:
    """The plan sends exactly ``request`` (and keeps the pending savepoint as it was)."""
    sent = plan.of_type(actions.StopWithSavepoint) + plan.of_type(actions.TriggerSavepoint)
    assert sent == [request]
    assert plan.status.pendingSavepoint is not None
    assert plan.status.pendingSavepoint.triggerId == "t1"


def _has(**expected: Any) -> Callable[[actions.Plan], None]:
    def check(plan: actions.Plan) -> None:
        for path, value in expected.items():
            node: Any = plan.status
            for part in path.split("__"):
                node = getattr(node, part)
            assert node == value, (path, node, value)

    return check


CASES = [
    # -- first deployment ------------------------------------------------------------------
    Case(
        "first deploy applies the children from empty state",
        GONE, EMPTY,
        ["event Deploying", "write apply-children", "apply -"],
        lifecycle=Lifecycle.CREATED, step=Step.APPLY_CHILDREN, restore=None,
        check=_has(reconciliation__deployedAt=stamp(NOW), reconciliation__observedGeneration=7),
    ),
    Case(
        "first deploy restores from initialSavepointPath",
        GONE, EMPTY,
        ["event Deploying", "write apply-children", "apply /sp/initial"],
        spec=raw(job__initialSavepointPath="/sp/initial"),
        lifecycle=Lifecycle.CREATED, restore="/sp/initial",
    ),
    Case(
        "a StreamJob created suspended deploys nothing",
        GONE, EMPTY, ["event Suspended"], spec=SUSPENDED,
        lifecycle=Lifecycle.SUSPENDED, step=None,
    ),
    Case(
        "an invalid first spec deploys nothing and says why",
        GONE, EMPTY, ["event InvalidSpec"],
        spec=raw(savepoints={"directory": "savepoints"}),
        lifecycle=Lifecycle.CREATED, error="nothing was deployed: savepoints.directory must be",
    ),
    Case(
        "the first deployment submits once the JobManager is ready",
        EMPTY_JM,
        status(stable=False, step=Step.APPLY_CHILDREN, job_id=None, job_state=None,
               restore="/sp/initial", deployed=ago(seconds=30)),
        ["write apply-children", "apply /sp/initial", "write submit-job", "submit /sp/initial"],
        lifecycle=Lifecycle.CREATED, step=Step.SUBMIT_JOB,
    ),
    Case(
        "the first deployment waits for its JobManager",
        seen(reachable=False, jm=PROGRESSING, tm=PROGRESSING),
        status(stable=False, step=Step.APPLY_CHILDREN, job_id=None, job_state=None,
               deployed=ago(seconds=30)),
        ["write apply-children", "apply -"],
        lifecycle=Lifecycle.CREATED, step=Step.APPLY_CHILDREN,
    ),
    Case(
        "a submitted job is adopted and the deployment is DEPLOYED",
        seen(details("j2")),
        status(stable=False, step=Step.SUBMIT_JOB, job_id="j2", job_state=None,
               deployed=ago(seconds=30)),
        ["event Deployed"],
        lifecycle=Lifecycle.DEPLOYED, step=None,
        check=_has(job__id="j2", job__state="RUNNING"),
    ),
    # -- stability -------------------------------------------------------------------------
    Case(
        "checkpoints and a quiet window make a deployment STABLE",
        seen(checkpoints=stats(completed=2)),
        status(stable=False, deployed=ago(seconds=31)),
        ["event Stable"],
        lifecycle=Lifecycle.STABLE,
        check=_has(reconciliation__lastStableSpec=encoded()),
    ),
    Case(
        "too few checkpoints keep a deployment DEPLOYED",
        seen(checkpoints=stats(completed=1)),
        status(stable=False, deployed=ago(seconds=31)),
        [], lifecycle=Lifecycle.DEPLOYED,
    ),
    Case(
        "a job that finished on its own before a pass saw it stable is STABLE (issue 10: a"
        " bounded job that ends quickly is not failed at the stability timeout)",
        seen(details(state=rest.JobStatus.FINISHED), checkpoints=stats(completed=1)),
        status(stable=False, deployed=ago(seconds=2), job_state="RUNNING"),
        ["event Stable"], lifecycle=Lifecycle.STABLE,
        check=_has(reconciliation__lastStableSpec=encoded(), job__state="FINISHED"),
    ),
    Case(
        "a restart restarts the stability window",
        seen(details(restarts=1), checkpoints=stats(completed=5)),
        status(stable=False, deployed=ago(seconds=40)),
        [], lifecycle=Lifecycle.DEPLOYED,
        check=_has(job__lastRestartTime=stamp(NOW), job__restarts=1),
    ),
    Case(
        "a restart older than the window does not hold stability back",
        seen(details(restarts=1), checkpoints=stats(completed=5)),
        status(stable=False, deployed=ago(minutes=2), restarts=1),
        ["event Stable"], lifecycle=Lifecycle.STABLE,
    ),
    Case(
        "a deployment not stable in time FAILS when rollback is off",
        seen(details(state=rest.JobStatus.RESTARTING), checkpoints=stats(completed=0)),
        status(raw(image="streamjob:2"), stable=False, stable_spec=encoded(),
               deployed=ago(minutes=6)),
        ["event StabilityTimeout"], spec=raw(image="streamjob:2"),
        lifecycle=Lifecycle.FAILED, error="not stable 5m after its deployment",
    ),
    Case(
        "a deployment not stable in time is rolled back from the upgrade savepoint",
        seen(details(state=rest.JobStatus.RESTARTING), checkpoints=stats(completed=0)),
        status(ROLLBACK, stable=False, stable_spec=encoded(), deployed=ago(minutes=6),
               restore="/sp/upgrade"),
        ["event RollingBack", "write stop-job", "cancel j1"], spec=ROLLBACK,
        lifecycle=Lifecycle.ROLLING_BACK, step=Step.STOP_JOB,
        check=_has(reconciliation__lastReconciledSpec=changes.encode(
            models.StreamJobSpec.model_validate(ROLLBACK))),
    ),
    Case(
        "a job that fails before it is stable is rolled back at once",
        seen(details(state=rest.JobStatus.FAILED, failure="boom")),
        status(ROLLBACK, stable=False, stable_spec=encoded(), deployed=ago(seconds=10),
               restore="/sp/upgrade"),
        ["event RollingBack", "write delete-deployments", *DELETES],
        spec=ROLLBACK, lifecycle=Lifecycle.ROLLING_BACK, restore="/sp/upgrade",
    ),
    Case(
        "without the upgrade's savepoint there is no rollback",
        seen(details(state=rest.JobStatus.RESTARTING)),
        status(ROLLBACK, stable=False, stable_spec=encoded(), deployed=ago(minutes=6)),
        ["event RollbackImpossible"], spec=ROLLBACK,
        lifecycle=Lifecycle.FAILED, error="no savepoint was taken for the upgrade",
    ),
    Case(
        "a rollback deploys the last stable spec from the upgrade savepoint",
        GONE,
        status(ROLLBACK, stable=False, stable_spec=encoded(), state=State.ROLLING_BACK,
               step=Step.DELETE_DEPLOYMENTS, restore="/sp/upgrade"),
        ["write delete-deployments", *DELETES, "write apply-children", "apply /sp/upgrade"],
        spec=ROLLBACK, lifecycle=Lifecycle.ROLLING_BACK,
        check=lambda p: _image_applied(p, "streamjob:1"),
    ),
    Case(
        "a rolled back job is ROLLED_BACK and the failed spec is not redeployed",
        seen(details("j3")),
        status(ROLLBACK, stable=False, stable_spec=encoded(), state=State.ROLLING_BACK,
               step=Step.SUBMIT_JOB, restore="/sp/upgrade"),
        ["event RolledBack"], spec=ROLLBACK, lifecycle=Lifecycle.ROLLED_BACK, step=None,
    ),
    Case(
        "ROLLED_BACK stays put while the spec is the one that failed",
        seen(checkpoints=stats(completed=9)),
        status(ROLLBACK, stable=False, stable_spec=encoded(), state=State.ROLLED_BACK,
               deployed=ago(minutes=20), restore="/sp/upgrade"),
        [], spec=ROLLBACK, lifecycle=Lifecycle.ROLLED_BACK,
    ),
    Case(
        "a new spec after a rollback upgrades from the rolled-back job",
        seen(),
        status(ROLLBACK, stable=False, stable_spec=encoded(), state=State.ROLLED_BACK),
        ["event Upgrading", "write stop-job", "stop j1 upgrade"],
        spec=raw(rollback={"enabled": True}, image="streamjob:3"),
        lifecycle=Lifecycle.UPGRADING,
        check=lambda p: _event_said(
            p, "Upgrading", "upgrade (image); upgrade mode savepoint"
        ),
    ),
    Case(
        "a first deployment stuck before its job runs FAILS after the timeout",
        seen(reachable=False, jm=PROGRESSING),
        status(stable=False, step=Step.APPLY_CHILDREN, job_id=None, job_state=None,
               deployed=ago(minutes=6)),
        ["event StabilityTimeout", "write apply-children", "apply -"],
        lifecycle=Lifecycle.FAILED, error="not running 5m after its deployment began",
    ),
    Case(
        "an upgrade stuck before its job runs is rolled back",
        seen(reachable=False, jm=PROGRESSING),
        status(ROLLBACK, stable=False, stable_spec=encoded(), state=State.UPGRADING,
               step=Step.APPLY_CHILDREN, job_id=None, job_state=None,
               deployed=ago(minutes=6), restore="/sp/upgrade"),
        ["event RollingBack", "write delete-deployments", *DELETES],
        spec=ROLLBACK, lifecycle=Lifecycle.ROLLING_BACK, restore="/sp/upgrade",
    ),
    # -- job failures ----------------------------------------------------------------------
    Case(
        "a job failed for good is FAILED with its cause",
        seen(details(state=rest.JobStatus.FAILED, failure="ZeroDivisionError in map")),
        status(), ["event JobFailed"],
        lifecycle=Lifecycle.FAILED, error="failed: ZeroDivisionError in map",
    ),
    Case(
        "a failure already reported is not reported again",
        seen(details(state=rest.JobStatus.FAILED, failure="ZeroDivisionError in map")),
        status(job_state="FAILED",
               error="job j1 failed: ZeroDivisionError in map; fix the spec and apply it, or"
               " change job.restartNonce to restart from the latest state"),
        [], lifecycle=Lifecycle.FAILED,
    ),
    Case(
        "a job the JobManager forgot is reported and recovered from its newest checkpoint",
        seen(jobs=()), status(), ["event JobLost", "write recover-job", "submit -"],
        step=Step.RECOVER_JOB, lifecycle=Lifecycle.DEPLOYED, error="",
    ),
    Case(
        "missing Deployments are applied again",
        seen(reachable=False, jm=ABSENT), status(),
        ["event ChildrenMissing", "write -", "apply -"], lifecycle=Lifecycle.STABLE,
    ),
    # -- invalid specs ---------------------------------------------------------------------
    Case(
        "an invalid new spec is reported while the last valid one keeps running",
        seen(), status(), ["event InvalidSpec"],
        spec=raw(image="streamjob:2", jobManager={"replicas": 2}),
        lifecycle=Lifecycle.STABLE, error="the last valid spec keeps running",
        check=_has(reconciliation__lastReconciledSpec=encoded()),
    ),
    Case(
        "a maxParallelism change with state is refused",
        seen(), status(), ["event InvalidChange"],
        spec=raw(job__maxParallelism=256), lifecycle=Lifecycle.STABLE,
        error="job.maxParallelism cannot change from 128 to 256",
    ),
    Case(
        "a maxParallelism change is fine when stateless",
        seen(), status(STATELESS), ["event Upgrading", "write stop-job", "cancel j1"],
        spec=raw(job__upgradeMode="stateless", job__maxParallelism=256),
    ),
    # -- upgrade: savepoint mode -----------------------------------------------------------
    Case(
        "an upgrade stops the job with a savepoint first",
        seen(), status(), ["event Upgrading", "write stop-job", "stop j1 upgrade"],
        spec=NEW_IMAGE, lifecycle=Lifecycle.UPGRADING, step=Step.STOP_JOB,
        check=_has(reconciliation__lastReconciledSpec=encoded(image="streamjob:2"),
                   pendingSavepoint__triggerType="upgrade", pendingSavepoint__triggerId=UPGRADE_ID,
                   pendingSavepoint__triggerTime=stamp(NOW), pendingSavepoint__jobId="j1"),
    ),
    Case(
        "a rescale is an upgrade with state",
        seen(), status(), ["event Upgrading", "write stop-job", "stop j1 upgrade"],
        spec=raw(job__parallelism=4, taskManager__replicas=4),
    ),
    Case(
        "a restartNonce restarts through a savepoint",
        seen(), status(), ["event Upgrading", "write stop-job", "stop j1 upgrade"],
        spec=raw(job__restartNonce=1),
    ),
    Case(
        "stability settings are recorded without a redeploy and STABLE stays",
        seen(), status(), [], spec=raw(stability={"checkpoints": 9}),
        lifecycle=Lifecycle.STABLE,
        check=_has(reconciliation__lastReconciledSpec=encoded(stability={"checkpoints": 9}),
                   reconciliation__lastStableSpec=encoded(stability={"checkpoints": 9})),
    ),
    Case(
        "crash resume: the stop's savepoint is still in progress",
        seen(savepoint=savepoint(rest.SavepointStatus.IN_PROGRESS)),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB, pending=SAVEPOINT_T1),
        [], spec=NEW_IMAGE, lifecycle=Lifecycle.UPGRADING, step=Step.STOP_JOB,
    ),
    Case(
        "crash resume: the stop's savepoint completed; the old Deployments go",
        seen(details(state=rest.JobStatus.FINISHED),
             savepoint=savepoint(rest.SavepointStatus.COMPLETED, "/sp/s1")),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB, pending=SAVEPOINT_T1),
        ["event SavepointCompleted", "write delete-deployments", *DELETES],
        spec=NEW_IMAGE, step=Step.DELETE_DEPLOYMENTS, restore="/sp/s1",
        check=_has(lastSavepoint__location="/sp/s1", lastSavepoint__trigger="upgrade",
                   pendingSavepoint=None),
    ),
    Case(
        "crash resume: the JobManager Deployment is deleted, the TaskManagers are going",
        seen(reachable=False, jm=ABSENT, tm=PROGRESSING),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.DELETE_DEPLOYMENTS, restore="/sp/s1"),
        ["write delete-deployments", *DELETES], spec=NEW_IMAGE,
        step=Step.DELETE_DEPLOYMENTS, restore="/sp/s1",
    ),
    Case(
        "crash resume: both Deployments are gone; the new children are applied",
        GONE,
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.DELETE_DEPLOYMENTS, restore="/sp/s1"),
        ["write delete-deployments", *DELETES, "write apply-children", "apply /sp/s1"],
        spec=NEW_IMAGE, step=Step.APPLY_CHILDREN,
        check=lambda p: _image_applied(p, "streamjob:2"),
    ),
    Case(
        "crash resume: the new JobManager is created but not ready; apply again and wait",
        seen(reachable=False, jm=PROGRESSING, tm=PROGRESSING),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.APPLY_CHILDREN, restore="/sp/s1",
               job_id=None, deployed=ago(seconds=20)),
        ["write apply-children", "apply /sp/s1"], spec=NEW_IMAGE, step=Step.APPLY_CHILDREN,
        check=_has(reconciliation__deployedAt=stamp(ago(seconds=20))),
    ),
    Case(
        "crash resume: the new JobManager is ready; submit from the savepoint",
        EMPTY_JM,
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.APPLY_CHILDREN, restore="/sp/s1",
               job_id=None, deployed=ago(seconds=20)),
        ["write apply-children", "apply /sp/s1", "write submit-job", "submit /sp/s1"],
        spec=NEW_IMAGE, step=Step.SUBMIT_JOB,
    ),
    Case(
        "crash resume: submitted but the job id was not recorded; adopt, never resubmit",
        seen(details("j2"), jobs=(overview("j2"),)),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.SUBMIT_JOB, restore="/sp/s1",
               job_id=None, deployed=ago(seconds=20)),
        ["event Deployed"], spec=NEW_IMAGE, lifecycle=Lifecycle.DEPLOYED, step=None,
        check=_has(job__id="j2"),
    ),
    Case(
        "crash resume: the stop's trigger id is recorded, the JobManager does not know it and"
        " the job runs: send the stop again under the same id",
        seen(),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB, pending=SAVEPOINT_T1),
        ["write stop-job", "stop j1 upgrade"], spec=NEW_IMAGE, step=Step.STOP_JOB,
        lifecycle=Lifecycle.UPGRADING,
        check=lambda p: _sent(p, actions.StopWithSavepoint("j1", UPGRADE, "/state/savepoints",
                                                           "t1")),
    ),
    Case(
        "crash resume: a stop unknown to the JobManager, whose job is not running, is lost;"
        " a young checkpoint stands in",
        seen(details(state=rest.JobStatus.FINISHED)),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB, pending=SAVEPOINT_T1,
               last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(minutes=1))),
        ["event SavepointFailed", "event CheckpointFallback", "write delete-deployments",
         *DELETES],
        spec=MAX_AGE, restore="/checkpoints/j1/chk-7",
    ),
    Case(
        "crash resume: a stop an older operator recorded without its request id is lost",
        seen(details(state=rest.JobStatus.FINISHED)),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB,
               pending=pending("upgrade", trigger_id=None),
               last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(minutes=1))),
        ["event SavepointFailed", "event CheckpointFallback", "write delete-deployments",
         *DELETES],
        spec=MAX_AGE, restore="/checkpoints/j1/chk-7",
    ),
    Case(
        "a failed stop-with-savepoint waits for the job to run again",
        seen(details(state=rest.JobStatus.RESTARTING),
             savepoint=savepoint(rest.SavepointStatus.FAILED)),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB, pending=SAVEPOINT_T1),
        ["event SavepointFailed"], spec=NEW_IMAGE, step=Step.STOP_JOB,
        check=_has(pendingSavepoint=None),
    ),
    Case(
        "a savepoint upgrade of a job that is not running, without maxAge, stops and reports",
        seen(details(state=rest.JobStatus.FAILED, failure="boom")),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB,
               last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(minutes=1))),
        ["event UpgradeBlocked"], spec=NEW_IMAGE, step=Step.STOP_JOB,
        lifecycle=Lifecycle.UPGRADING, error="checkpointing.maxAge is not set",
    ),
    Case(
        "a savepoint upgrade of a failed job falls back to a young checkpoint",
        seen(details(state=rest.JobStatus.FAILED, failure="boom"),
             checkpoints=stats(latest=(8, ago(minutes=2)))),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB),
        ["event CheckpointFallback", "write delete-deployments", *DELETES],
        spec=MAX_AGE, restore="/checkpoints/j1/chk-8",
    ),
    Case(
        "a savepoint upgrade never falls back to a checkpoint older than maxAge",
        seen(details(state=rest.JobStatus.FAILED, failure="boom"),
             checkpoints=stats(latest=(8, ago(minutes=30)))),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB),
        ["event UpgradeBlocked"], spec=MAX_AGE, step=Step.STOP_JOB,
        error="older than checkpointing.maxAge (10m)",
    ),
    Case(
        "a savepoint upgrade with no checkpoint at all stops and reports",
        seen(details(state=rest.JobStatus.FAILED, failure="boom")),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB),
        ["event UpgradeBlocked"], spec=MAX_AGE, error="it has no checkpoint",
    ),
    Case(
        "a restarting job is cancelled before the checkpoint fallback",
        seen(details(state=rest.JobStatus.RESTARTING),
             checkpoints=stats(latest=(8, ago(minutes=2)))),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB),
        ["write stop-job", "cancel j1"], spec=MAX_AGE, step=Step.STOP_JOB,
    ),
    Case(
        "an unreachable JobManager: a young checkpoint status saw stands in",
        seen(reachable=False),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB,
               last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(minutes=1))),
        ["event CheckpointFallback", "write delete-deployments", *DELETES],
        spec=MAX_AGE, restore="/checkpoints/j1/chk-7",
    ),
    Case(
        "an unreachable JobManager: an HA checkpoint of unknown age does not",
        seen(reachable=False, ha_checkpoint=observed.HaCheckpoint(9, "/checkpoints/j1/chk-9")),
        status(MAX_AGE, state=State.UPGRADING, step=Step.STOP_JOB,
               last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(minutes=1))),
        ["event UpgradeBlocked"], spec=MAX_AGE, error="age of checkpoint 9 is unknown",
    ),
    Case(
        "a blocked upgrade is unblocked by switching to stateless",
        seen(details(state=rest.JobStatus.FAILED, failure="boom")),
        status(NEW_IMAGE, state=State.UPGRADING, step=Step.STOP_JOB),
        ["event Retargeted", "write delete-deployments", *DELETES],
        spec=raw(image="streamjob:2", job__upgradeMode="stateless"), restore=None,
    ),
    # -- upgrade: last-state and stateless -------------------------------------------------
    Case(
        "a last-state upgrade cancels the job first",
        seen(checkpoints=stats(latest=(11, ago(seconds=5)))), status(LAST_STATE),
        ["event Upgrading", "write stop-job", "cancel j1"],
        spec=raw(job__upgradeMode="last-state", image="streamjob:2"),
    ),
    Case(
        "a last-state upgrade restores from the cancelled job's latest checkpoint",
        seen(details(state=rest.JobStatus.CANCELED), checkpoints=stats(latest=(12, ago(hours=3)))),
        status(raw(job__upgradeMode="last-state", image="streamjob:2"), state=State.UPGRADING,
               step=Step.STOP_JOB),
        ["write delete-deployments", *DELETES],
        spec=raw(job__upgradeMode="last-state", image="streamjob:2"),
        restore="/checkpoints/j1/chk-12",
    ),
    Case(
        "a last-state upgrade without a JobManager restores from the HA metadata",
        seen(reachable=False, jm=ABSENT, tm=ABSENT,
             ha_checkpoint=observed.HaCheckpoint(9, "/checkpoints/j1/chk-9")),
        status(raw(job__upgradeMode="last-state", image="streamjob:2"), state=State.UPGRADING,
               step=Step.STOP_JOB, last_checkpoint=(7, "/checkpoints/j1/chk-7", ago(hours=1))),
        ["write delete-deployments", *DELETES, "write apply-children",
         "apply /checkpoints/j1/chk-9"],
        spec=raw(job__upgradeMode="last-state", image="streamjob:2"),
        restore="/checkpoints/j1/chk-9",
    ),
    Case(
        "a last-state upgrade of a job that never checkpointed restores what it started from",
        seen(details(state=rest.JobStatus.CANCELED)),
        status(raw(job__upgradeMode="last-state", image="streamjob:2"), state=State.UPGRADING,
               step=Step.STOP_JOB, restore="/sp/initial"),
        ["write delete-deployments", *DELETES],
        spec=raw(job__upgradeMode="last-state", image="streamjob:2"), restore="/sp/initial",
    ),
    Case(
        "a last-state upgrade with no state at all stops and reports",
        seen(details(state=rest.JobStatus.CANCELED)),
        status(raw(job__upgradeMode="last-state", image="streamjob:2"), state=State.UPGRADING,
               step=Step.STOP_JOB),
        ["event UpgradeBlocked"],
        spec=raw(job__upgradeMode="last-state", image="streamjob:2"),
        error="no checkpoint to restore from",
    ),
    Case(
        "a stateless upgrade cancels and starts from empty state",
        seen(details(state=rest.JobStatus.CANCELED), checkpoints=stats(latest=(12, ago(hours=3)))),
        status(raw(job__upgradeMode="stateless", image="streamjob:2"), state=State.UPGRADING,
               step=Step.STOP_JOB),
        ["write delete-deployments", *DELETES],
        spec=raw(job__upgradeMode="stateless", image="streamjob:2"), restore=None,
    ),
    # -- suspend and resume ----------------------------------------------------------------
    Case(
        "suspending stops the job with a savepoint",
        seen(), status(), ["event Suspending", "write stop-job", "stop j1 suspend"],
        spec=SUSPENDED, lifecycle=Lifecycle.UPGRADING,
    ),
    Case(
        "a suspended job's pods go and it is SUSPENDED",
        seen(reachable=False, jm=ABSENT, tm=ABSENT),
        status(SUSPENDED, state=State.UPGRADING, step=Step.DELETE_DEPLOYMENTS, restore="/sp/s9"),
        ["write delete-deployments", *DELETES, "event Suspended"],
        spec=SUSPENDED, lifecycle=Lifecycle.SUSPENDED, step=None, restore="/sp/s9",
    ),
    Case(
        "a spec change while suspended is recorded only",
        GONE, status(SUSPENDED, job_state="FINISHED", restore="/sp/s9"), [],
        spec=raw(job__state="suspended", image="streamjob:2"), lifecycle=Lifecycle.SUSPENDED,
        check=_has(reconciliation__lastReconciledSpec=encoded(job__state="suspended",
                                                              image="streamjob:2")),
    ),
    Case(
        "resuming restores from the suspend savepoint",
        GONE, status(SUSPENDED, job_state="FINISHED", restore="/sp/s9"),
        ["event Upgrading", "write apply-children", "apply /sp/s9"],
        lifecycle=Lifecycle.UPGRADING, step=Step.APPLY_CHILDREN, restore="/sp/s9",
        check=lambda p: _event_said(p, "Upgrading", "resuming (job.state); upgrade mode savepoint"),
    ),
    Case(
        "resuming a stateless job starts from empty state",
        GONE, status(raw(job__state="suspended", job__upgradeMode="stateless"), restore="/x"),
        ["event Upgrading", "write apply-children", "apply -"],
        spec=STATELESS, restore=None,
    ),
    # -- savepoints ------------------------------------------------------------------------
    Case(
        "a new savepointTriggerNonce takes a manual savepoint",
        seen(), status(), ["write -", "savepoint manual 3"],
        spec=raw(job__savepointTriggerNonce=3), lifecycle=Lifecycle.STABLE,
        check=_has(pendingSavepoint__triggerType="manual", pendingSavepoint__nonce=3,
                   reconciliation__lastReconciledSpec=encoded(job__savepointTriggerNonce=3)),
    ),
    Case(
        "a manual savepoint waits for the one in flight",
        seen(savepoint=savepoint(rest.SavepointStatus.IN_PROGRESS)),
        status(pending=pending("periodic")), [],
        spec=raw(job__savepointTriggerNonce=3),
        check=_has(reconciliation__lastReconciledSpec=encoded()),
    ),
    Case(
        "a manual savepoint of a job that is not running is skipped with a warning",
        seen(details(state=rest.JobStatus.FAILED)), status(job_state="FAILED"),
        ["event SavepointSkipped", "event JobFailed"],
        spec=raw(job__savepointTriggerNonce=3),
        check=_has(reconciliation__lastReconciledSpec=encoded(job__savepointTriggerNonce=3)),
    ),
    Case(
        "a completed manual savepoint is recorded in the history",
        seen(savepoint=savepoint(rest.SavepointStatus.COMPLETED, "/sp/m3")),
        status(raw(job__savepointTriggerNonce=3), pending=pending("manual", nonce=3)),
        ["event SavepointCompleted"], spec=raw(job__savepointTriggerNonce=3),
        check=_has(lastSavepoint__location="/sp/m3", lastSavepoint__nonce=3,
                   lastSavepoint__trigger="manual", pendingSavepoint=None),
    ),
    Case(
        "a savepoint the JobManager does not know is sent again under its id while the job runs",
        seen(), status(pending=pending("manual", nonce=4)), ["write -", "savepoint manual 4"],
        check=lambda p: _sent(p, actions.TriggerSavepoint("j1", MANUAL, "/state/savepoints",
                                                          "t1", 4)),
    ),
    Case(
        "a savepoint the JobManager forgot, of a job that is not running, is given up",
        seen(details(state=rest.JobStatus.RESTARTING)), status(pending=pending("periodic")),
        ["event SavepointFailed"],
        check=_has(pendingSavepoint=None),
    ),
    Case(
        "a savepoint the JobManager does not know is given up after its timeout",
        seen(), status(pending=pending("periodic", at=ago(minutes=12))),
        ["event SavepointFailed"],
        check=_has(pendingSavepoint=None),
    ),
    Case(
        "a savepoint in progress for too long is given up",
        seen(reachable=False),
        status(pending=pending("periodic", at=ago(minutes=12))), ["event SavepointFailed"],
    ),
    Case(
        "a periodic savepoint is taken when due",
        seen(), status(raw(savepoints={"directory": "/sp", "interval": "10m"}),
                       deployed=ago(minutes=11)),
        ["write -", "savepoint periodic"],
        spec=raw(savepoints={"directory": "/sp", "interval": "10m"}),
        check=_has(lastPeriodicSavepointTime=stamp(NOW)),
    ),
    Case(
        "a periodic savepoint is not taken before it is due",
        seen(), status(raw(savepoints={"directory": "/sp", "interval": "10m"}),
                       deployed=ago(minutes=9, seconds=30)),
        [], spec=raw(savepoints={"directory": "/sp", "interval": "10m"}),
        check=lambda p: _requeue(p, 30),
        config=configuration.OperatorConfiguration(
            checkpoint_status_interval=datetime.timedelta(minutes=5)
        ),
    ),
    Case(
        "a running job is looked at again after its checkpoint interval, for a fresh"
        " LAST CHECKPOINT, but not more often than checkpoint_status_interval",
        seen(), status(), [], check=lambda p: _requeue(p, 15),
    ),
    Case(
        "a job that is not running is looked at again after the reconcile interval only",
        seen(reachable=False), status(), [], check=lambda p: _requeue(p, 60),
    ),
    Case(
        "a running job with a longer checkpoint interval is looked at again after it",
        seen(), status(raw(checkpointing={"interval": "40s"})), [],
        spec=raw(checkpointing={"interval": "40s"}), check=lambda p: _requeue(p, 40),
    ),
    Case(
        "expired savepoints are disposed of before they leave the history",
        seen(),
        status(raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
               history=[record("/sp/1", ago(hours=4)), record("/sp/2", ago(hours=3)),
                        record("/sp/3", ago(hours=2)), record("/sp/4", ago(hours=1))],
               last_savepoint=record("/sp/4", ago(hours=1))),
        ["write -", "dispose /sp/1", "dispose /sp/2"],
        spec=raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
        check=lambda p: _history(p, ["/sp/1", "/sp/2", "/sp/3", "/sp/4"]),
    ),
    Case(
        "an expired savepoint on S3 is disposed of in the store the job's s3.* options name",
        seen(),
        status(raw(savepoints={"directory": "s3://b/sp", "historyMaxCount": 1},
                   config={"s3.endpoint": "http://minio:9000", "s3.path.style.access": "TRUE",
                           "s3.region": "eu-west-1"}),
               history=[record("s3://b/sp/1", ago(hours=2)), record("s3://b/sp/2", ago(hours=1))],
               last_savepoint=record("s3://b/sp/2", ago(hours=1))),
        ["write -", "dispose s3://b/sp/1"],
        spec=raw(savepoints={"directory": "s3://b/sp", "historyMaxCount": 1},
                 config={"s3.endpoint": "http://minio:9000", "s3.path.style.access": "TRUE",
                         "s3.region": "eu-west-1"}),
        check=lambda p: _disposed_in(
            p, actions.ObjectStore("http://minio:9000", "eu-west-1", path_style_access=True)
        ),
    ),
    Case(
        "a disposed savepoint leaves the history",
        seen(disposed=frozenset({"/sp/1"})),
        status(raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
               history=[record("/sp/1", ago(hours=4)), record("/sp/2", ago(hours=3)),
                        record("/sp/3", ago(hours=2)), record("/sp/4", ago(hours=1))],
               last_savepoint=record("/sp/4", ago(hours=1))),
        ["event SavepointsDisposed", "write -", "dispose /sp/2"],
        spec=raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
        check=lambda p: _history(p, ["/sp/2", "/sp/3", "/sp/4"]),
    ),
    Case(
        "a savepoint whose files remain leaves the history without a SavepointsDisposed"
        " event (acting posted SavepointNotDisposed for it)",
        seen(disposed=frozenset({"/sp/1", "/sp/2"}), kept_files=frozenset({"/sp/1"})),
        status(raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
               history=[record("/sp/1", ago(hours=4)), record("/sp/2", ago(hours=3)),
                        record("/sp/3", ago(hours=2)), record("/sp/4", ago(hours=1))],
               last_savepoint=record("/sp/4", ago(hours=1))),
        ["event SavepointsDisposed"],
        spec=raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
        check=lambda p: _history_and_event(
            p, ["/sp/3", "/sp/4"], "SavepointsDisposed", "1 expired savepoint(s) disposed of"
        ),
    ),
    Case(
        "savepoints that all keep their files leave the history with no Normal event",
        seen(disposed=frozenset({"/sp/1"}), kept_files=frozenset({"/sp/1"})),
        status(raw(savepoints={"directory": "/sp", "historyMaxCount": 3}),
               history=[record("/sp/1", ago(hours=4)), record("/sp/2", ago(hours=3)),
                        record("/sp/3", ago(hours=2)), record("/sp/4", ago(hours=1))],
               last_savepoint=record("/sp/4", ago(hours=1))),
        [],
        spec=raw(savepoints={"directory": "/sp", "historyMaxCount": 3}),
        check=lambda p: _history(p, ["/sp/2", "/sp/3", "/sp/4"]),
    ),
    Case(
        "of savepoints completed within one second (times are to the second), the oldest"
        " in the history expire first",
        seen(),
        status(raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
               history=[record("/sp/1", ago(seconds=1)), record("/sp/2", ago(seconds=1)),
                        record("/sp/3", ago(seconds=1))],
               last_savepoint=record("/sp/3", ago(seconds=1))),
        ["write -", "dispose /sp/1"],
        spec=raw(savepoints={"directory": "/sp", "historyMaxCount": 2}),
    ),
    Case(
        "savepoints past historyMaxAge go, but never the last one or the restore path",
        seen(),
        status(raw(savepoints={"directory": "/sp", "historyMaxAge": "1h"}),
               history=[record("/sp/1", ago(hours=4)), record("/sp/2", ago(hours=3)),
                        record("/sp/3", ago(hours=2))],
               last_savepoint=record("/sp/3", ago(hours=2)), restore="/sp/1"),
        ["write -", "dispose /sp/2"],
        spec=raw(savepoints={"directory": "/sp", "historyMaxAge": "1h"}),
    ),
    # -- deletion --------------------------------------------------------------------------
    Case(
        "deleting cancels the job",
        seen(meta=dataclasses.replace(META, deletion_timestamp=NOW)), status(),
        ["event Deleting", "write stop-job", "cancel j1"], lifecycle=Lifecycle.DELETING,
    ),
    Case(
        "deleting with a final savepoint stops the job with one",
        seen(meta=dataclasses.replace(META, deletion_timestamp=NOW)), status(),
        ["event Deleting", "write stop-job", "stop j1 delete"], lifecycle=Lifecycle.DELETING,
        config=configuration.OperatorConfiguration(savepoint_on_deletion=True),
    ),
    Case(
        "the final savepoint is waited for until the deadline",
        seen(meta=dataclasses.replace(META, deletion_timestamp=ago(minutes=2)),
             savepoint=savepoint(rest.SavepointStatus.IN_PROGRESS)),
        status(state=State.DELETING, step=Step.STOP_JOB, pending=pending("delete")),
        [], lifecycle=Lifecycle.DELETING,
        config=configuration.OperatorConfiguration(savepoint_on_deletion=True),
    ),
    Case(
        "a final savepoint past the deadline is abandoned and the job cancelled",
        seen(meta=dataclasses.replace(META, deletion_timestamp=ago(minutes=6)),
             savepoint=savepoint(rest.SavepointStatus.IN_PROGRESS)),
        status(state=State.DELETING, step=Step.STOP_JOB,
               pending=pending("delete", at=ago(minutes=5))),
        ["event FinalSavepointTimedOut", "write stop-job", "cancel j1"],
        config=configuration.OperatorConfiguration(savepoint_on_deletion=True),
    ),
    Case(
        "a completed final savepoint is recorded and the StreamJob let go",
        seen(details(state=rest.JobStatus.FINISHED),
             meta=dataclasses.replace(META, deletion_timestamp=ago(minutes=1)),
             savepoint=savepoint(rest.SavepointStatus.COMPLETED, "/sp/final")),
        status(state=State.DELETING, step=Step.STOP_JOB, pending=pending("delete")),
        ["event SavepointCompleted", "write stop-job", "delete ha", "finish"],
        config=configuration.OperatorConfiguration(savepoint_on_deletion=True),
        check=_has(lastSavepoint__location="/sp/final", lastSavepoint__trigger="delete"),
    ),
    Case(
        "a stopped job's StreamJob is let go",
        seen(reachable=False, meta=dataclasses.replace(META, deletion_timestamp=NOW)),
        status(state=State.DELETING, step=Step.STOP_JOB),
        ["write stop-job", "delete ha", "finish"], lifecycle=Lifecycle.DELETING,
    ),
]  # fmt: skip


def _image_applied(plan: actions.Plan, image: str) -> None:
    applied = plan.of_type(actions.ApplyChildren)
    assert applied
    assert all(a.job.spec.image == image for a in applied)


def _requeue(plan: actions.Plan, seconds: float) -> None:
    assert plan.requeue_after == pytest.approx(seconds)


def _history(plan: actions.Plan, locations: list[str]) -> None:
    assert [e.location for e in plan.status.savepointHistory] == locations


def _disposed_in(plan: actions.Plan, store: actions.ObjectStore) -> None:
    stores = [a.store for a in plan.actions if isinstance(a, actions.DisposeSavepoint)]
    assert stores == [store], stores


def _event_said(plan: actions.Plan, reason: str, message: str) -> None:
    events = [(e.reason, e.message) for e in plan.events]
    assert events == [(reason, message)], events


def _history_and_event(plan: actions.Plan, locations: list[str], reason: str, message: str) -> None:
    _history(plan, locations)
    events = [(e.reason, e.message) for e in plan.events]
    assert events.count((reason, message)) == 1, events


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_same_observation_gives_the_same_plan_and_leaves_status_alone(case: Case) -> None:
    before = case.status.model_dump()
    first = planner.plan(case.seen, case.spec, case.status, NOW, case.config)
    second = planner.plan(case.seen, case.spec, case.status, NOW, case.config)
    assert first == second
    assert case.status.model_dump() == before


def test_a_trigger_id_is_the_runtimes_format_stable_and_distinct_per_streamjob_job_kind_time() -> (
    None
):
    first = savepoints.trigger_id("uid-1", "j1", UPGRADE, NOW)
    assert re.fullmatch(rest.TRIGGER_ID_PATTERN, first)
    assert rest.StopRequest(trigger_id=first).trigger_id == first
    assert savepoints.trigger_id("uid-1", "j1", UPGRADE, NOW) == first
    others = {
        savepoints.trigger_id("uid-2", "j1", UPGRADE, NOW),
        savepoints.trigger_id("uid-1", "j2", UPGRADE, NOW),
        savepoints.trigger_id("uid-1", "j1", MANUAL, NOW),
        savepoints.trigger_id("uid-1", "j1", UPGRADE, NOW + datetime.timedelta(microseconds=1)),
    }
    assert len(others) == 4
    assert first not in others


def test_status_links_the_web_ui_of_the_jobmanager_that_runs_the_job() -> None:
    running = planner.plan(seen(), raw(), status(), NOW).status
    assert running.jobManager == models.JobManagerStatus(
        webUrl="https://wordcount-jobmanager.prod.svc:8081/"
    )
    green = status()
    green.blueGreen = models.BlueGreenStatus(active="green")
    on_green = planner.plan(seen(color=target.Color.GREEN), raw(), green, NOW).status
    assert on_green.jobManager is not None
    assert on_green.jobManager.webUrl == "https://wordcount-green-jobmanager.prod.svc:8081/"
    before_submission = planner.plan(EMPTY_JM, raw(), status(job_id=None), NOW).status
    assert before_submission.jobManager is None
