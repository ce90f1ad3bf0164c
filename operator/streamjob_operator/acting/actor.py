"""Takes a Plan's actions in order, stops at the first that fails, then records the status.

What each action does:

- WriteStatus: merge-patch the status subresource, with the resourceVersion last seen
  as precondition (``acting.status``);
- ApplyChildren: nothing when the children were applied before with the same hash
  (``acting.children.applied``: the two Deployments as the pass observed them, when
  nothing of the plan wrote one before, else two reads; no write, so a pass that waits
  for its JobManager re-applies nothing); else first the job's CA, certificate and REST token
  Secrets (made or renewed, ``acting.credentials``), then create or replace every
  manifest of ``desired.children`` (``acting.children``), NetworkPolicies as
  ``Settings.network`` says (turned off: deleted, 404 done);
- DeleteJobManager / DeleteTaskManager: delete the Deployment (foreground; 404 done);
  DeleteHaMetadata: delete the HA ConfigMap, then the leader Lease (404 done);
  DeleteChildren: every child of the cluster (Deployments in the foreground first),
  then its HA metadata (404 done);
- SubmitJob, TriggerSavepoint, StopWithSavepoint, CancelJob: the REST API of the
  JobManager of the action's cluster (``where``) at its Service's address, through
  the same address resolution observing uses, over HTTPS with the job's REST token and
  CAs (the credentials the pass was given, else those of the Secrets).
  A submission the JobManager refuses (400) fails the action and is reported in
  :attr:`Outcome.refused`, for planning to show and not to repeat at once.
  A cancel of a job that ended (409) or that the JobManager does not know (404) is
  done. A trigger or stop carries the trigger id planning chose and status already
  holds; a JobManager that answers with another request id fails the action. The id
  of a submitted job is written into ``status.job.id`` at once, before anything else;
  later status writes of the same plan carry it too;
- DisposeSavepoint: ``acting.savepoints`` (the operator deletes only what it mounts);
- RecordEvent: a core/v1 Event, idempotent (``acting.events``);
- FinishDeletion, RequeueAfter: reported in the :class:`Outcome` for the caller (the
  kopf glue releases the finalizer, or schedules the next pass).

Once every action succeeded, ``Plan.status`` (with the recorded ids) is written. After
a failure it is not: the plan's status assumes its actions happened; the next pass
plans again from the status as stored, which the WriteStatus before any destructive
action made accurate.

Events and disposals are not worth stopping for: an Event that cannot be posted is
logged, and a savepoint that cannot be deleted is reported (once per location) and
asked for again by a later pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pydantic
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_operator.acting import children, credentials, events, savepoints, status
from streamjob_operator.api import models
from streamjob_operator.desired import children as desired_children
from streamjob_operator.desired import jobmanager, metadata, network, target
from streamjob_operator.observing import children as observed_children
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.observing import resource
from streamjob_operator.planning import actions, observed
from streamjob_runtime.api import client as rest_client

log = logging.getLogger(__name__)

COMPONENT = "streamjob-operator"

FAILURES: tuple[type[BaseException], ...] = (
    ApiException,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    rest_client.RestError,
    pydantic.ValidationError,
    children.ApplyRefused,
    RuntimeError,
)
"""What an action may fail with (anything else is a bug, and propagates)."""


JUST_ENSURED = datetime.timedelta(seconds=2)
"""Credentials ensured this recently need not be ensured again before children are
applied: the pass that applies them ensured them when it began."""


@dataclasses.dataclass(frozen=True)
class Settings:
    resolve: rest_observing.Resolve = rest_observing.identity
    rest_timeout_s: float = 30.0
    savepoint_mounts: tuple[Path, ...] = ()
    savepoint_buckets: tuple[str, ...] = ()  # s3:// roots the operator disposes under
    instance: str = dataclasses.field(default_factory=socket.gethostname)
    network: network.Settings = dataclasses.field(default_factory=network.Settings)
    # how long a job's credentials, once ensured, are used without reading its Secrets
    credentials_refresh: datetime.timedelta = datetime.timedelta(seconds=60)


@dataclasses.dataclass
class Outcome:
    taken: list[actions.Action] = dataclasses.field(default_factory=list)
    failed: actions.Action | None = None
    error: str | None = None
    conflict: bool = False  # the failure was a 409 (someone else wrote first)
    requeue_after: float | None = None
    finished_deletion: bool = False
    disposed: list[str] = dataclasses.field(default_factory=list)
    # of ``disposed``: those whose files remain (reported by a SavepointNotDisposed Warning)
    kept_files: list[str] = dataclasses.field(default_factory=list)
    refused: observed.Refusal | None = None  # the submission a JobManager refused (400)
    submitted: bool = False  # a JobManager accepted a submission
    recorded: bool = False  # Plan.status was written (or already stored)

    @property
    def ok(self) -> bool:
        return self.failed is None and self.error is None


def describe(action: actions.Action | None) -> str:
    return "recording the status" if action is None else type(action).__name__


def _explain(error: BaseException) -> str:
    if isinstance(error, ApiException):
        body = error.body.decode() if isinstance(error.body, bytes) else str(error.body or "")
        return f"Kubernetes answered {error.status} {error.reason}: {body}".strip()
    return f"{type(error).__name__}: {error}"


class Actor:
    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
        rest_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """``rest_session``: the session JobManager requests share
        (``observing.jobmanager.session``; the caller closes it); None: one per client."""
        self.api = api
        self.rest_session = rest_session
        self.settings = settings or Settings()
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._reported: set[str] = set()  # savepoints reported as not disposable
        # StreamJob uid -> its credentials as last ensured, and when
        self._ensured: dict[str, tuple[rest_observing.Credentials, datetime.datetime]] = {}

    async def credentials(
        self,
        streamjob: resource.StreamJobResource,
        *,
        fresh: bool = False,
        created: bool = False,
    ) -> rest_observing.Credentials | None:
        """The job's REST credentials: made or renewed as due (``acting.credentials``);
        only read for a StreamJob being deleted (None when they are gone).

        Once ensured they are used for ``Settings.credentials_refresh`` without reading
        the Secrets again (three GETs a pass saved; renewals are due days ahead), unless
        ``fresh``: before children are applied, the Secrets their pods mount are made
        sure of (unless that was done in the last :data:`JUST_ENSURED`: by the same
        pass). ``created``: the pass runs because the StreamJob was created; if no pass
        recorded its status either, its Secrets are created without reading them first
        (``credentials.ensure``'s ``new``)."""
        job = streamjob.identity()
        if streamjob.deletion_timestamp is not None:
            self._ensured.pop(streamjob.uid, None)
            return await credentials.read(self.api, job)
        now = self.clock()
        known = self._ensured.get(streamjob.uid)
        max_age = JUST_ENSURED if fresh else self.settings.credentials_refresh
        if known is not None and now - known[1] < max_age:
            # a copy: its SSL context (14 kB) is made for the pass, not kept per StreamJob
            return dataclasses.replace(known[0])
        new = created and known is None and streamjob.status == models.StreamJobStatus()
        ensured = await credentials.ensure(self.api, job, now, new=new)
        self._ensured[streamjob.uid] = (ensured, now)
        return dataclasses.replace(ensured)

    async def act(
        self,
        streamjob: resource.StreamJobResource,
        plan: actions.Plan,
        rest_credentials: rest_observing.Credentials | None = None,
        read: observed_children.Read | None = None,
    ) -> Outcome:
        """Take ``plan``'s actions in order, then record its status; ``rest_credentials``:
        what :meth:`credentials` gave this pass (asked for when needed, if not given);
        ``read``: the Deployments as this pass observed them (used until an action
        writes or deletes one).

        An Event is posted once the status write that follows it in the plan (the step's
        write-ahead record), or the final one, is stored: a pass that fails before that
        (a 409 conflict, say) is planned again and posts its Events then, so they are not
        posted twice.
        """
        run = _Run(self, streamjob, rest_credentials, read)
        outcome = run.outcome
        events: list[actions.RecordEvent] = []
        for action in plan.actions:
            if isinstance(action, actions.RecordEvent):
                events.append(action)
                continue
            try:
                await run.take(action)
            except FAILURES as e:
                outcome.failed = action
                outcome.error = f"{describe(action)} failed: {_explain(e)}"
                outcome.conflict = isinstance(e, ApiException) and e.status == 409
                return outcome
            outcome.taken.append(action)
            if isinstance(action, actions.WriteStatus):
                await run.post(events)
        try:
            await run.writer.write(run.overlay(plan.status))
        except FAILURES as e:
            outcome.error = f"{describe(None)} failed: {_explain(e)}"
            outcome.conflict = isinstance(e, ApiException) and e.status == 409
            return outcome
        outcome.recorded = True
        await run.post(events)
        return outcome


class _Run:
    """One plan's execution: the status writer and the ids recorded on the way."""

    def __init__(
        self,
        actor: Actor,
        streamjob: resource.StreamJobResource,
        rest_credentials: rest_observing.Credentials | None,
        read: observed_children.Read | None = None,
    ) -> None:
        self.actor = actor
        self.rest_credentials = rest_credentials
        self.read = read  # None once an action wrote or deleted a Deployment
        self.api = actor.api
        self.settings = actor.settings
        self.streamjob = streamjob
        self.writer = status.StatusWriter(actor.api, streamjob)
        self.outcome = Outcome()
        self.job_id: str | None = None

    async def post(self, events: list[actions.RecordEvent]) -> None:
        """Post ``events`` (never fails: see ``event``) and empty the list."""
        for record in events:
            await self.event(record)
            self.outcome.taken.append(record)
        events.clear()

    def overlay(self, planned: models.StreamJobStatus) -> models.StreamJobStatus:
        """``planned`` with the job id this run's submission returned (planning could not
        know it)."""
        result = planned.model_copy(deep=True)
        if self.job_id is not None and result.job.id is None:
            result.job.id = self.job_id
        return result

    async def credentials(self) -> rest_observing.Credentials | None:
        if self.rest_credentials is None:
            self.rest_credentials = await self.actor.credentials(self.streamjob)
        return self.rest_credentials

    async def rest(self, where: target.DeploymentTarget) -> rest_client.JobManagerClient:
        url = jobmanager.rest_url(self.streamjob.identity(), where)
        return rest_observing.client(
            self.settings.resolve(url),
            self.settings.rest_timeout_s,
            await self.credentials(),
            self.actor.rest_session,
        )

    async def take(self, action: actions.Action) -> None:
        names = self.streamjob.identity()
        if isinstance(
            action, actions.DeleteJobManager | actions.DeleteTaskManager | actions.DeleteChildren
        ):
            self.read = None
        match action:
            case actions.WriteStatus(status=s):
                await self.writer.write(self.overlay(s))
            case actions.ApplyChildren(job=job, where=where):
                manifests = desired_children.children(job, where, self.settings.network)
                set_hash = children.children_hash(manifests)  # once for both below
                state = await children.applied(self.api, manifests, self.read, set_hash)
                if state is children.Applied.SAME:
                    return  # as applied before, with the same hash: nothing to write
                self.read = None
                # the Secrets the pods mount, before the pods
                self.rest_credentials = await self.actor.credentials(self.streamjob, fresh=True)
                fresh = state is children.Applied.ABSENT
                await children.apply_all(self.api, manifests, fresh=fresh, set_hash=set_hash)
                if not self.settings.network.enabled:  # turned off: none may linger
                    await children.delete_network_policies(self.api, names, where)
            case actions.DeleteJobManager(where=where):
                await children.delete_deployment(
                    self.api, names, where, metadata.Component.JOBMANAGER
                )
            case actions.DeleteTaskManager(where=where):
                await children.delete_deployment(
                    self.api, names, where, metadata.Component.TASKMANAGER
                )
            case actions.DeleteHaMetadata(where=where):
                await children.delete_ha_metadata(self.api, names, where)
            case actions.DeleteChildren(where=where):
                await children.delete_children(self.api, names, where)
            case actions.SubmitJob(submission=submission, where=where):
                async with await self.rest(where) as jm:
                    try:
                        job_id = await jm.submit(submission)
                    except rest_client.RestError as e:
                        if e.status == 400:
                            refusal = observed.Refusal(submission, e.message, self.actor.clock())
                            self.outcome.refused = refusal
                        raise
                self.job_id = job_id
                self.outcome.submitted = True
                await self.writer.record(
                    lambda s: setattr(s.job, "id", job_id), lambda s: s.job.id in (None, job_id)
                )
            case actions.TriggerSavepoint(
                job_id=job_id, directory=directory, trigger_id=tid, where=where
            ):
                async with await self.rest(where) as jm:
                    request_id = await jm.trigger_savepoint(job_id, directory, trigger_id=tid)
                self.check_trigger(tid, request_id)
            case actions.StopWithSavepoint(
                job_id=job_id, directory=directory, trigger_id=tid, where=where
            ):
                async with await self.rest(where) as jm:
                    request_id = await jm.stop(job_id, directory, trigger_id=tid)
                self.check_trigger(tid, request_id)
            case actions.CancelJob(job_id=job_id, where=where):
                await self.cancel(job_id, where)
            case actions.DisposeSavepoint(location=location, store=store):
                await self.dispose(location, store)
            case actions.RecordEvent():
                await self.event(action)
            case actions.FinishDeletion():
                self.outcome.finished_deletion = True
            case actions.RequeueAfter(seconds=seconds):
                self.outcome.requeue_after = seconds

    @staticmethod
    def check_trigger(trigger_id: str, request_id: str) -> None:
        if request_id != trigger_id:
            raise RuntimeError(
                f"the JobManager answered the savepoint request {trigger_id} with request id"
                f" {request_id}: it ignores client-chosen trigger ids (a JobManager older than"
                " the operator?); run a JobManager image of the operator's version"
            )

    async def cancel(self, job_id: str, where: target.DeploymentTarget) -> None:
        try:
            async with await self.rest(where) as jm:
                await jm.cancel(job_id)
        except rest_client.RestError as e:
            if e.status not in (404, 409):  # unknown, or ended already: cancelled enough
                raise

    async def dispose(self, location: str, store: actions.ObjectStore) -> None:
        mounts, roots = self.settings.savepoint_mounts, self.settings.savepoint_buckets
        try:
            result = await asyncio.to_thread(savepoints.dispose, location, mounts, roots, store)
        except OSError as e:
            await self.report_once(
                location,
                "SavepointDisposalFailed",
                f"the expired savepoint {location} could not be deleted ({e}); retrying",
            )
            return
        if not result.freed:
            await self.report_once(
                location, "SavepointNotDisposed", savepoints.explain(location, result)
            )
            self.outcome.kept_files.append(location)
        self.outcome.disposed.append(location)

    async def report_once(self, location: str, reason: str, message: str) -> None:
        if location in self.actor._reported:
            return
        self.actor._reported.add(location)
        await self.event(actions.RecordEvent(actions.EventType.WARNING, reason, message))

    async def event(self, record: actions.RecordEvent) -> None:
        """Post ``record`` named after the status write it follows (``events.name``), so
        that sending it again cannot store it twice; a POST that got no answer is sent
        once more."""
        after = self.writer.resource_version or ""
        try:
            for attempt in (1, 2):
                try:
                    await events.post(
                        self.api,
                        self.streamjob,
                        record,
                        self.actor.clock(),
                        COMPONENT,
                        self.settings.instance,
                        after,
                    )
                    return
                except (aiohttp.ClientError, OSError, TimeoutError):
                    if attempt == 2:
                        raise
        except FAILURES as e:
            log.warning(
                "StreamJob %s/%s: Event %s not recorded: %s",
                self.streamjob.namespace,
                self.streamjob.name,
                record.reason,
                _explain(e),
            )
