"""The kopf glue: StreamJob events become reconcile passes (the only module importing kopf).

A pass (:meth:`Reconciler.reconcile`) reads the StreamJob afresh, makes or renews the
job's CA, certificate and REST token (``acting.credentials``, which observing and acting
use to call the JobManager), observes its world (``observing``), plans
(``planning.planner.plan``) and acts (``acting``). kopf decides when passes run:

- ``on.create``, ``on.update`` (the spec or metadata changed) and ``on.resume`` (the
  operator started, or became the leader, and finds the StreamJob) run a pass at once;
- a change of one of its Deployments (kopf watches those the operator manages) makes
  its next pass due at once and runs it at once (a prompt pass, in a task of its own),
  so a step waiting for a deletion or for readiness goes on as soon as it can;
- when the last pass asked to be looked at again (``RequeueAfter``), or failed and its
  retry delay is over, the next pass runs then (a prompt pass): retries are scheduled,
  never slept;
- a timer every ``Options.timer_interval`` seconds runs a pass that is due and not
  under way: the safety net of the two above;
- ``on.delete`` runs passes until planning releases the StreamJob (``FinishDeletion``:
  the job was stopped, with a final savepoint bounded in time when configured); until
  then it raises ``kopf.TemporaryError`` and kopf keeps its finalizer and calls again.

Passes of one StreamJob never overlap (one lock per StreamJob); passes of different
StreamJobs run concurrently. A pass that fails (Kubernetes or the JobManager did not
answer, a write conflicted, a bug) is logged with the StreamJob's name, counted, and
retried through ``kopf.TemporaryError(delay=...)``: the control loop never dies.

kopf's own bookkeeping goes to annotations prefixed ``streamjob.dev`` (the status
belongs to planning, and its schema has no room for kopf), its finalizer is
``streamjob.dev/finalizer``, it runs standalone (leadership is the Lease's, see
``leadership``), and it posts its warnings and errors as Events.

Metrics (prometheus-client, in :class:`Metrics`' own registry; ``__main__`` serves
them): passes by trigger, failed passes by stage, pass durations, actions by type and
result, StreamJobs by lifecycle state, and whether this replica leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiohttp
import kopf
import prometheus_client
from kubernetes_asyncio import client

from streamjob_operator.acting import actor
from streamjob_operator.api import models
from streamjob_operator.desired import metadata
from streamjob_operator.observing import children as observed_children
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.observing import observer, resource
from streamjob_operator.planning import actions, configuration, observed, planner

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = models.GROUP, models.VERSION, models.PLURAL
PREFIX = "streamjob.dev"
FINALIZER = f"{PREFIX}/finalizer"

ApiFactory = Callable[[], Awaitable[client.ApiClient]]
Clock = Callable[[], datetime.datetime]


@dataclasses.dataclass(frozen=True)
class Options:
    """How passes are run.

    - ``timer_interval``: how often the timer looks whether a pass is due (seconds): a
      safety net, since passes run when due; each look is a kopf handler call, which
      with a thousand StreamJobs every 2 s cost a fifth of a core;
    - ``retry_delay`` / ``conflict_delay``: when to try again after a failed pass, or
      after one whose write conflicted with someone else's;
    - ``rest_timeout_s``: per JobManager request while observing (acting's is in
      ``acting``);
    - ``max_concurrent_passes``: passes under way at once, over all StreamJobs (the
      Flink and controller-runtime operators' max concurrent reconciles); the others
      wait their turn before their first request, so that a thousand StreamJobs
      resumed at once do not queue a thousand requests for the client's connections,
      where their timeouts would run out (the client has 100 connections);
    - ``planning``: the operator's settings that planning reads;
    - ``acting``: the JobManager address resolution, savepoint volumes, identity.
    """

    timer_interval: float = 10.0
    retry_delay: float = 5.0
    conflict_delay: float = 1.0
    rest_timeout_s: float = 5.0
    max_concurrent_passes: int = 16
    planning: configuration.OperatorConfiguration = dataclasses.field(
        default_factory=configuration.OperatorConfiguration
    )
    acting: actor.Settings = dataclasses.field(default_factory=actor.Settings)


class Metrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        r = self.registry
        self.reconciles = prometheus_client.Counter(
            "streamjob_operator_reconciles",
            "Reconcile passes, by what started them (create, update, resume, delete; due:"
            " when scheduled or woken by a Deployment; timer: the safety net).",
            ["trigger"],
            registry=r,
        )
        self.errors = prometheus_client.Counter(
            "streamjob_operator_reconcile_errors",
            "Reconcile passes that failed, by stage (read, credentials, observe, plan, act).",
            ["stage"],
            registry=r,
        )
        self.duration = prometheus_client.Histogram(
            "streamjob_operator_reconcile_duration_seconds",
            "How long a reconcile pass took.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.actions = prometheus_client.Counter(
            "streamjob_operator_actions",
            "Actions of plans, by type and result (ok, failed).",
            ["action", "result"],
            registry=r,
        )
        self.streamjobs = prometheus_client.Gauge(
            "streamjob_operator_streamjobs",
            "StreamJobs this operator reconciles, by lifecycle state.",
            ["lifecycle"],
            registry=r,
        )
        self.leader = prometheus_client.Gauge(
            "streamjob_operator_leader",
            "1 while this operator replica holds the Lease and runs the handlers.",
            registry=r,
        )
        self._lifecycles: dict[str, models.LifecycleState] = {}
        for state in models.LifecycleState:
            self.streamjobs.labels(state.value).set(0)

    def lifecycle(self, key: str, state: models.LifecycleState | None) -> None:
        """The StreamJob ``key`` is in ``state`` now (None: gone). Only the gauges of its
        old and new state change (not a count over every StreamJob at every pass)."""
        old = self._lifecycles.pop(key, None) if state is None else self._lifecycles.get(key)
        if old is state:
            return
        if state is not None:
            self._lifecycles[key] = state
            self.streamjobs.labels(state.value).inc()
        if old is not None:
            self.streamjobs.labels(old.value).dec()

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class Stopping(RuntimeError):
    """The operator is stopping (kopf ran its cleanup): no pass starts any more."""


class PassFailed(Exception):
    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Interrupted(PassFailed):
    """The operator stopped (or stopped leading) under the pass: its successor runs it."""


class Conflicted(PassFailed):
    """A write of the pass met a newer resourceVersion (409): someone else (often kopf's
    own bookkeeping) wrote first. Normal on a busy object: retried, not an error."""


# A conflicted pass runs again at once (it reads afresh) this many times in all before it
# is left to the timer (after ``conflict_delay``).
CONFLICT_ATTEMPTS = 3


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Reconciler:
    """Runs passes; remembers per StreamJob when the next is due and what was disposed of.

    ``api`` makes the Kubernetes client (called once, lazily, on the loop the passes
    run on; :meth:`close` closes it). ``leading`` says whether this replica may act.
    """

    def __init__(
        self,
        api: ApiFactory,
        options: Options | None = None,
        metrics: Metrics | None = None,
        *,
        clock: Clock = _utcnow,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self._api_factory = api
        self.options = options or Options()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.leading = leading
        self.passes = 0  # passes started, for tests and logs
        self._api: client.ApiClient | None = None
        self._rest_session: aiohttp.ClientSession | None = None  # JobManager requests'
        self._api_lock = asyncio.Lock()  # concurrent first passes make one client
        self._stopping = False
        self._actor: actor.Actor | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._due: dict[str, float] = {}
        self._disposed: dict[str, set[str]] = {}
        self._kept_files: dict[str, set[str]] = {}
        self._refused: dict[str, observed.Refusal] = {}
        # prompt passes (see wake): the running one per StreamJob, and the timers armed
        self._slots = asyncio.Semaphore(self.options.max_concurrent_passes)
        self._prompt: dict[str, asyncio.Task[None]] = {}
        self._armed: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> None:
        """kopf (re)starts: passes may run again (after :meth:`close`)."""
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def api(self) -> client.ApiClient:
        async with self._api_lock:
            if self._stopping:
                raise Stopping("the operator is stopping")
            if self._api is None:
                self._api = await self._api_factory()
                self._rest_session = rest_observing.session()
                self._actor = actor.Actor(
                    self._api,
                    self.options.acting,
                    clock=self.clock,
                    rest_session=self._rest_session,
                )
            return self._api

    async def close(self) -> None:
        """Close the Kubernetes client; passes fail with Stopping until :meth:`start`."""
        for handle in self._armed.values():
            handle.cancel()
        self._armed.clear()
        async with self._api_lock:
            self._stopping = True
            if self._api is not None:
                api, self._api, self._actor = self._api, None, None
                await api.close()
            if self._rest_session is not None:
                rest_session, self._rest_session = self._rest_session, None
                await rest_session.close()

    def due(self, namespace: str, name: str) -> bool:
        """Whether the StreamJob's next pass is due. One no pass has seen is not: its
        create or resume pass comes first (a timer pass besides would double the work
        of a thousand StreamJobs created or resumed at once)."""
        due = self._due.get(f"{namespace}/{name}")
        return due is not None and due <= time.monotonic()

    def next_pass_in(self, namespace: str, name: str) -> float:
        """Seconds until the StreamJob's next pass is due (0: due now or unknown)."""
        return max(0.0, self._due.get(f"{namespace}/{name}", 0.0) - time.monotonic())

    def wake(self, namespace: str, name: str) -> None:
        """Something a StreamJob may wait for happened (one of its Deployments changed:
        deleted, ready, gone): its next pass is due now, and runs at once (a prompt
        pass, :meth:`_run_promptly`), not at the next timer tick. A StreamJob no pass has
        seen yet is left to its create or resume pass."""
        key = f"{namespace}/{name}"
        if key in self._due:
            self._due[key] = min(self._due[key], time.monotonic())
            self._run_promptly(key)

    def _run_promptly(self, key: str) -> None:
        """Run the StreamJob's pass now if it is due, in a task of its own (never in
        kopf's handler, which would hold kopf's worker for that object). One such task
        per StreamJob at a time; one that finds the StreamJob due again after its pass
        (woken meanwhile) runs another. Failures are left to the timer, which retries
        when the failed pass scheduled it."""
        self._armed.pop(key, None)
        if key in self._prompt or self._stopping or not self.leading():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the loop (tests calling wake): the timer runs it
            return
        self._prompt[key] = loop.create_task(self._prompt_passes(key), name=f"pass-{key}")

    async def _prompt_passes(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        try:
            while self.due(namespace, name) and not self._stopping and self.leading():
                try:
                    if await self.reconcile(namespace, name, "due") is None:
                        return  # gone
                except PassFailed:
                    return  # scheduled for a retry; the timer runs it
        except Exception:  # a prompt pass is an optimisation: never let it die loudly
            log.exception("StreamJob %s: a prompt pass failed", key)
        finally:
            self._prompt.pop(key, None)

    def forget(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        for memory in (self._due, self._disposed, self._kept_files, self._refused, self._locks):
            memory.pop(key, None)
        armed = self._armed.pop(key, None)
        if armed is not None:
            armed.cancel()
        self.metrics.lifecycle(key, None)

    def _schedule(self, key: str, delay: float) -> None:
        """The next pass is due in ``delay`` seconds; it runs then (a prompt pass), not
        at the timer's next tick after that: a step that asked to be looked at again in
        1 s (a JobManager answering a request) is not held to the timer's 2 s."""
        self._due[key] = time.monotonic() + delay
        armed = self._armed.pop(key, None)
        if armed is not None:
            armed.cancel()
        with contextlib.suppress(RuntimeError):  # not on a loop: the timer runs it
            loop = asyncio.get_running_loop()
            self._armed[key] = loop.call_later(delay, self._run_promptly, key)

    def defer(self, namespace: str, name: str) -> None:
        """A pass that could not run now is due after the retry delay."""
        self._schedule(f"{namespace}/{name}", self.options.retry_delay)

    def busy(self, namespace: str, name: str) -> bool:
        """A prompt pass of the StreamJob is under way (the timer leaves it alone)."""
        return f"{namespace}/{name}" in self._prompt

    async def reconcile(self, namespace: str, name: str, trigger: str) -> actor.Outcome | None:
        """One pass; None when the StreamJob is gone. Raises PassFailed (with a retry delay)."""
        key = f"{namespace}/{name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock, self._slots:
            self.passes += 1
            self.metrics.reconciles.labels(trigger).inc()
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                try:
                    with self.metrics.duration.time():
                        return await self._pass(key, namespace, name, trigger)
                except Conflicted as e:
                    if attempt == CONFLICT_ATTEMPTS:
                        raise
                    log.debug("StreamJob %s: %s; running the pass again", key, e)
            raise AssertionError("unreachable")

    async def _pass(
        self, key: str, namespace: str, name: str, trigger: str
    ) -> actor.Outcome | None:
        stage = "read"
        try:
            api = await self.api()
            acting = self._actor  # close() may drop it while this pass waits on the API
            rest_session = self._rest_session
            streamjob = await resource.read(api, namespace, name)
            if streamjob is None:
                self.forget(namespace, name)
                return None
            if acting is None:
                raise Stopping("the operator is stopping")
            stage = "credentials"
            rest_credentials = await acting.credentials(streamjob, created=trigger == "create")
            stage = "observe"
            read = observed_children.Read()
            seen = await observer.observe(
                api,
                streamjob,
                resolve=self.options.acting.resolve,
                disposed=self._disposed.get(key, set()),
                kept_files=self._kept_files.get(key, set()),
                refused=self._refused.get(key),
                rest_timeout_s=self.options.rest_timeout_s,
                credentials=rest_credentials,
                read=read,
                rest_session=rest_session,
            )
            stage = "plan"
            plan = planner.plan(
                seen, streamjob.spec, streamjob.status, self.clock(), self.options.planning
            )
            stage = "act"
            if self._stopping or acting is None:
                raise Stopping("the operator is stopping")
            outcome = await acting.act(streamjob, plan, rest_credentials, read)
        except Stopping as e:
            raise Interrupted(str(e), self.options.retry_delay) from None
        except Exception as e:  # the loop must not die: count, log, retry later
            if self._stopping:  # close() pulled the client from under the pass
                raise Interrupted(f"the operator is stopping ({stage}: {e})", 0) from None
            self.metrics.errors.labels(stage).inc()
            self._schedule(key, self.options.retry_delay)
            log.exception("StreamJob %s: the reconcile pass failed to %s", key, stage)
            raise PassFailed(f"{stage}: {type(e).__name__}: {e}", self.options.retry_delay) from e
        self._account(key, streamjob, plan, outcome)
        if not outcome.ok and self._stopping:
            raise Interrupted(f"the operator is stopping ({outcome.error})", 0)
        if outcome.ok:
            reconcile = self.options.planning.reconcile_interval.total_seconds()
            self._schedule(key, outcome.requeue_after or reconcile)
            return outcome
        if outcome.conflict:
            self._schedule(key, self.options.conflict_delay)
            raise Conflicted(outcome.error or "a write conflicted", self.options.conflict_delay)
        self.metrics.errors.labels("act").inc()
        # A refused submission is planning's to report: the next pass shows it at once.
        delay = self.options.conflict_delay if outcome.refused else self.options.retry_delay
        self._schedule(key, delay)
        log.warning("StreamJob %s: %s; retrying in %s s", key, outcome.error, delay)
        raise PassFailed(outcome.error or "acting failed", delay)

    def _account(
        self,
        key: str,
        streamjob: resource.StreamJobResource,
        plan: actions.Plan,
        outcome: actor.Outcome,
    ) -> None:
        for action in outcome.taken:
            self.metrics.actions.labels(type(action).__name__, "ok").inc()
        if outcome.failed is not None:
            self.metrics.actions.labels(type(outcome.failed).__name__, "failed").inc()
        history = {e.location for e in plan.status.savepointHistory}
        kept = {location for location in self._disposed.get(key, set()) if location in history}
        self._disposed[key] = kept | set(outcome.disposed)
        self._kept_files[key] = {
            location
            for location in self._kept_files.get(key, set()) | set(outcome.kept_files)
            if location in self._disposed[key]
        }
        if outcome.refused is not None:
            self._refused[key] = outcome.refused
        elif outcome.submitted:
            self._refused.pop(key, None)
        status = plan.status if outcome.recorded else streamjob.status
        self.metrics.lifecycle(key, status.lifecycleState)
        log.debug(
            "StreamJob %s: %s, %d action(s), next pass in %s s",
            key,
            status.lifecycleState.value,
            len(outcome.taken),
            outcome.requeue_after,
        )


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotations diff-base storage, building an event's essence (what kopf
    compares with the last handled one: the body without its status and system
    metadata) from the fields it keeps only. kopf's own deep-copies the whole body
    first, status and metadata included, for every event of every StreamJob and
    Deployment it watches, then drops them. The essence is the same."""

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Any = None,
    ) -> kopf.BodyEssence:
        if extra_fields:  # fields of the status to keep: kopf's way, on the whole body
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        kept: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        # labels and annotations are what kopf keeps of the metadata; ownerReferences
        # name its storage keys
        kept["metadata"] = {
            k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta
        }
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)), extra_fields=extra_fields)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (see the module doc)."""
    settings.peering.standalone = True
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "streamjob-operator"
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = DiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )


async def _run_pass(
    reconciler: Reconciler, namespace: str, name: str, trigger: str
) -> actor.Outcome | None:
    """Run a pass for kopf. A replica that does not lead, or is stopping, runs none and
    tells kopf nothing went wrong (no ERROR log, no Warning Event on each of a thousand
    StreamJobs): the leader, or this replica's next term, runs a resume pass for each.
    Only the deletion handler hears of it, so that it never takes that for done."""
    if not reconciler.leading() or reconciler.stopping:
        why = "the operator is stopping" if reconciler.stopping else "not the leader"
        if trigger == "delete":
            raise kopf.TemporaryError(why, delay=reconciler.options.retry_delay)
        log.debug("StreamJob %s/%s: no %s pass: %s", namespace, name, trigger, why)
        reconciler.defer(namespace, name)  # the timer runs it if this replica leads again
        return None
    try:
        return await reconciler.reconcile(namespace, name, trigger)
    except Interrupted as e:
        if trigger == "delete":
            raise kopf.TemporaryError(str(e), delay=e.delay) from None
        log.info("StreamJob %s/%s: pass interrupted: %s", namespace, name, e)
        return None
    except Conflicted as e:
        if trigger == "delete":  # the deletion handler must not take this for done
            raise kopf.TemporaryError(str(e), delay=e.delay) from None
        # The timer runs the pass when due (scheduled): no kopf retry, no ERROR log, no
        # Warning Event for what is normal on a busy object.
        log.info("StreamJob %s/%s: %s; retrying in %s s", namespace, name, e, e.delay)
        return None
    except PassFailed as e:
        raise kopf.TemporaryError(str(e), delay=e.delay) from None


def build_registry(reconciler: Reconciler, *, login: bool = False) -> kopf.OperatorRegistry:
    """The handlers of this operator, bound to ``reconciler``; with ``login``, kopf logs in
    as kubernetes_asyncio does (in-cluster, else kubeconfig)."""
    registry = kopf.OperatorRegistry()
    resource_ = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings)
        reconciler.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.close()

    if login:

        @kopf.on.login(registry=registry)
        async def kubernetes_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return await kopf.login_via_async_client(**kwargs)

    async def changed(*, name: str, namespace: str | None, reason: str, **_: Any) -> None:
        await _run_pass(reconciler, namespace or "", name, str(reason))

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={metadata.MANAGED_BY_LABEL: metadata.MANAGER},
        registry=registry,
    )
    async def child_changed(*, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        """A JobManager or TaskManager Deployment changed: a step waiting for it (its
        deletion, its readiness) goes on at once, not a progress check later. (Async,
        so that it runs on the loop the passes run on: kopf runs sync handlers on
        threads.)"""
        for owner in body.metadata.get("ownerReferences") or []:
            if owner.get("kind") == models.KIND and owner.get("name"):
                reconciler.wake(namespace or "", owner["name"])

    kopf.on.create(*resource_, id="reconcile-created", registry=registry)(changed)
    kopf.on.update(*resource_, id="reconcile-updated", registry=registry)(changed)
    kopf.on.resume(*resource_, id="reconcile-resumed", registry=registry)(changed)

    @kopf.timer(*resource_, interval=reconciler.options.timer_interval, registry=registry)
    async def reconcile_when_due(*, name: str, namespace: str | None, **_: Any) -> None:
        ns = namespace or ""
        if reconciler.due(ns, name) and not reconciler.stopping and not reconciler.busy(ns, name):
            await _run_pass(reconciler, namespace or "", name, "timer")

    @kopf.on.delete(*resource_, registry=registry)
    async def reconcile_deleted(*, name: str, namespace: str | None, **_: Any) -> None:
        outcome = await _run_pass(reconciler, namespace or "", name, "delete")
        if outcome is None or outcome.finished_deletion:
            reconciler.forget(namespace or "", name)
            return
        progress = reconciler.options.planning.progress_check_interval.total_seconds()
        raise kopf.TemporaryError(
            "stopping the job before the StreamJob goes", delay=outcome.requeue_after or progress
        )

    return registry


async def operate(
    registry: kopf.OperatorRegistry,
    *,
    namespaces: Sequence[str] = (),
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run kopf with ``registry`` until ``stop`` is set (cluster-wide without ``namespaces``)."""
    settings = kopf.OperatorSettings()
    configure(settings)
    await kopf.operator(
        registry=registry,
        settings=settings,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        stop_flag=stop,
        ready_flag=ready,
    )
