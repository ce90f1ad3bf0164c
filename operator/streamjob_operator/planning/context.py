"""The state of one reconcile pass and what every decision uses to record its outcome.

A :class:`Pass` holds the inputs (observation, status as it was, time, configuration)
and gathers the outputs: the actions in order, the errors for ``status.error``, and
when to look again. The decisions themselves live beside it, one module per concern
(``savepoints``, ``restore``, ``redeploy``, ``rollback``, ``running``, ``upgrade``,
``deletion``, ``bluegreen``), as functions of the pass; ``planner`` orders them.
"""

from __future__ import annotations

import abc
import datetime

from streamjob_operator.api import models
from streamjob_operator.desired import jobmanager, target
from streamjob_operator.planning import (
    actions,
    bluegreen,
    changes,
    clock,
    configuration,
    lifecycle,
    observed,
    steps,
)
from streamjob_runtime.api import models as rest

WARNING = actions.EventType.WARNING


class Pass(abc.ABC):
    """One pass: ``status`` is the working copy (``before`` stays as it was given).

    The abstract methods are the decisions the blue-green step machine calls back
    into (``bluegreen.Host``); ``planner`` supplies them.
    """

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

    def soon_answer(self) -> None:
        """Look again after ``answer_check_interval``: a JobManager acts on a request
        (a savepoint, a cancel, a submission) within seconds."""
        self.soon(
            self.now + min(self.config.answer_check_interval, self.config.progress_check_interval)
        )

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
        r = self.r
        if r.step is None:
            r.stepStartedAt = None
        elif r.step != self.before.reconciliation.step or r.stepStartedAt is None:
            r.stepStartedAt = clock.format_time(self.now)  # entered this pass
        self.status.error = "; ".join(self.errors) or None
        self.r.observedGeneration = self.seen.meta.generation
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

    def refused(self, job: rest.JobSubmission, advice: str = "fix the spec and apply it") -> bool:
        """Whether the JobManager refused this very submission and it is not yet time to
        send it again. A refusal is reported (status error, one ``SubmitFailed`` Event)
        for as long as the submission stays the same; it is sent again
        ``reconcile_interval`` after the refusal, in case the cause has passed (a
        savepoint not yet visible), and a new spec is submitted at once."""
        refusal = self.seen.refused
        if refusal is None or refusal.submission != job:
            return False
        self.error(f"the JobManager refused the job: {refusal.message}; {advice}", "SubmitFailed")
        retry = refusal.at + self.config.reconcile_interval
        if self.now < retry:
            self.soon(retry)
            return True
        return False

    def awaiting_deletion(self, what: str) -> None:
        """A step waits for Deployments it deleted (``what`` names them); past
        ``deletion_timeout`` from the step's start this is reported (status error, one
        ``DeletionStuck`` Warning). It keeps waiting: new Deployments cannot take the
        names of ones still being deleted."""
        self.soon()
        started = self.r.stepStartedAt
        timeout = self.config.deletion_timeout
        if started is None or self.now - clock.parse_time(started) <= timeout:
            return
        self.error(
            f"{what}: still being deleted {timeout} after step {self.r.step} began, so its"
            " pods do not terminate (a node that is down, a finalizer); delete them by hand"
            " (kubectl delete pod --force --grace-period=0 POD) and the step carries on",
            "DeletionStuck",
        )

    @property
    def here(self) -> target.DeploymentTarget:
        """The cluster of ``status.job``: where job actions go."""
        return bluegreen.job_target(self.status)

    def streamjob(self, spec: models.StreamJobSpec) -> target.StreamJob:
        meta = self.seen.meta
        return target.StreamJob(meta.name, meta.namespace, meta.uid, spec)

    # -- what the blue-green step machine calls back into ------------------------------------

    @abc.abstractmethod
    def can_roll_back(self) -> bool: ...

    @abc.abstractmethod
    def start_redeploy(self, spec: models.StreamJobSpec, why: str) -> None: ...

    @abc.abstractmethod
    def stop_job(
        self,
        spec: models.StreamJobSpec,
        step: steps.Step = steps.Step.STOP_JOB,
        then: bluegreen.Then | None = None,
    ) -> None: ...
