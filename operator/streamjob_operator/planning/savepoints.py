"""Savepoint bookkeeping: records, history retention, periodic triggers; and the
savepoint decisions of a pass (settle the pending one, begin, request and trigger one,
apply retention).

Retention (``savepoints.historyMaxCount`` / ``historyMaxAge``): the newest entries are
kept up to the count, and younger than the age; the rest expire. An expired entry
leaves the history only once its disposal succeeded (acting reports disposed
locations in ``Observed.disposed``); until then planning asks again each pass. Never
disposed: the last savepoint, and the current deployment's restore path (the
savepoint a rollback restores from); they stay in the history beyond the limits.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid

from streamjob_operator.api import models
from streamjob_operator.planning import actions, clock, context, lifecycle
from streamjob_runtime.api import models as rest

Kind = actions.SavepointKind
WARNING = actions.EventType.WARNING
NORMAL = actions.EventType.NORMAL


def record(
    status: models.StreamJobStatus,
    kind: str,
    location: str,
    now: datetime.datetime,
    nonce: int | None,
) -> models.SavepointRecord:
    entry = models.SavepointRecord(
        location=location, time=clock.format_time(now), trigger=kind, nonce=nonce
    )
    status.lastSavepoint = entry
    status.savepointHistory = [*status.savepointHistory, entry]
    return entry


@dataclasses.dataclass(frozen=True)
class Retention:
    history: list[models.SavepointRecord]  # what stays, oldest first
    dispose: list[str]  # expired locations still to dispose of


def retention(
    spec: models.StreamJobSpec,
    status: models.StreamJobStatus,
    now: datetime.datetime,
    disposed: frozenset[str],
) -> Retention:
    protected = {status.reconciliation.restorePath}
    if status.lastSavepoint is not None:
        protected.add(status.lastSavepoint.location)
    max_age = spec.savepoints.historyMaxAge
    oldest = None if max_age is None else now - clock.duration(max_age)
    # Times are to the second: the history's order (completion order) breaks ties.
    newest_first = [
        entry
        for _, entry in sorted(
            enumerate(status.savepointHistory),
            key=lambda item: (clock.parse_time(item[1].time), item[0]),
            reverse=True,
        )
    ]
    keep: list[models.SavepointRecord] = []
    dispose: list[str] = []
    for rank, entry in enumerate(newest_first):
        expired = rank >= spec.savepoints.historyMaxCount or (
            oldest is not None and clock.parse_time(entry.time) < oldest
        )
        if not expired or entry.location in protected:
            keep.append(entry)
        elif entry.location not in disposed:
            keep.append(entry)
            dispose.append(entry.location)
    keep.reverse()
    dispose.reverse()
    return Retention(keep, dispose)


def next_periodic(
    spec: models.StreamJobSpec, status: models.StreamJobStatus
) -> datetime.datetime | None:
    """When the next periodic savepoint is due (None: no periodic savepoints, or not
    deployed): ``savepoints.interval`` after the last periodic trigger or the deploy."""
    interval = spec.savepoints.interval
    deployed_at = status.reconciliation.deployedAt
    if interval is None or deployed_at is None:
        return None
    since = clock.parse_time(deployed_at)
    if status.lastPeriodicSavepointTime is not None:
        since = max(since, clock.parse_time(status.lastPeriodicSavepointTime))
    return since + clock.duration(interval)


_TRIGGER_IDS = uuid.UUID("6f3c2a1e-5b0d-4c8e-9a47-2d1f0e6b8c35")


def trigger_id(
    streamjob_uid: str, job_id: str, kind: actions.SavepointKind, now: datetime.datetime
) -> str:
    """The trigger id of a savepoint requested now (32 hex digits, as the JobManager's
    REST API takes them): chosen by planning, so that status records it before the
    request is sent, and the same request sent again after a crash carries it too.
    Distinct for every StreamJob, job, kind and moment (to the microsecond)."""
    name = f"{streamjob_uid}/{job_id}/{kind.value}/{now.astimezone(datetime.UTC).isoformat()}"
    return uuid.uuid5(_TRIGGER_IDS, name).hex


STOP_KINDS = frozenset(
    {actions.SavepointKind.UPGRADE, actions.SavepointKind.SUSPEND, actions.SavepointKind.DELETE}
)


# -- the savepoint decisions of a pass ----------------------------------------


def savepoint_timeout(p: context.Pass) -> datetime.timedelta:
    spec = lifecycle.deployed_spec(p.status)
    timeout = clock.duration(spec.checkpointing.timeout) if spec else datetime.timedelta(0)
    return timeout + p.config.reconcile_interval


def settle(p: context.Pass) -> None:
    """Resolve ``status.pendingSavepoint`` from what the JobManager says of it."""
    pending = p.status.pendingSavepoint
    if pending is None:
        return
    info = p.seen.savepoint
    if info is not None and info.request_id != pending.triggerId:
        info = None
    kind = Kind(pending.triggerType)
    if info is not None and info.status is rest.SavepointStatus.COMPLETED:
        location = info.location or ""
        record(p.status, kind.value, location, p.now, pending.nonce)
        p.status.pendingSavepoint = None
        p.event(NORMAL, "SavepointCompleted", f"{kind.value} savepoint {location}")
        if kind in STOP_KINDS:
            p.stopped_with = location
        return
    if info is not None and info.status is rest.SavepointStatus.FAILED:
        lost(p, f"failed: {info.failure_cause or 'no cause given'}")
        return
    triggered = clock.parse_time(pending.triggerTime)
    timed_out = p.now - triggered > savepoint_timeout(p)
    if pending.triggerId is None:
        # written by an operator that recorded the JobManager's id after the request
        lost(
            p,
            "was not confirmed by the JobManager (the trigger failed, or the operator"
            " stopped before it could record the request)",
        )
    elif info is None and p.seen.rest_reachable:
        # The request never arrived (the operator stopped between recording its id
        # and sending it, or sending failed), or the JobManager forgot it (it
        # restarted). Sending it again under the same id is safe either way.
        running = p.seen.job_running and pending.jobId == p.status.job.id
        if running and not timed_out:
            p.write()
            request(p, pending)
            p.soon_answer()
        else:
            lost(
                p,
                f"request {pending.triggerId} is unknown to the JobManager (it restarted)"
                + ("" if running else f" and job {pending.jobId} is not running"),
            )
    elif timed_out:
        lost(
            p,
            f"did not complete within {savepoint_timeout(p)} of its trigger at"
            f" {pending.triggerTime}",
        )
    else:
        p.soon_answer()


def lost(p: context.Pass, why: str) -> None:
    pending = p.status.pendingSavepoint
    assert pending is not None
    p.status.pendingSavepoint = None
    p.savepoint_failed = True
    p.event(WARNING, "SavepointFailed", f"the {pending.triggerType} savepoint {why}")
    p.soon()


def begin(p: context.Pass, kind: Kind, nonce: int | None = None) -> models.PendingSavepoint:
    """Record a savepoint of the job about to be requested, with the trigger id the
    request will carry (write it before the request: the write-ahead log entry)."""
    job_id = p.status.job.id
    assert job_id is not None
    pending = models.PendingSavepoint(
        triggerId=trigger_id(p.seen.meta.uid, job_id, kind, p.now),
        triggerType=kind.value,
        triggerTime=clock.format_time(p.now),
        nonce=nonce,
        jobId=job_id,
    )
    p.status.pendingSavepoint = pending
    p.soon_answer()
    return pending


def request(p: context.Pass, pending: models.PendingSavepoint) -> None:
    """Ask the JobManager for ``pending`` under its trigger id: stop-with-savepoint for
    the kinds that stop the job, a savepoint for the others. Sent again after a crash
    or a failed send, the same id finds the request already started."""
    kind = Kind(pending.triggerType)
    spec = lifecycle.deployed_spec(p.status)
    directory = spec.savepoints.directory if spec is not None else None
    assert pending.jobId is not None
    assert pending.triggerId is not None
    if kind in STOP_KINDS:
        p.emit(
            actions.StopWithSavepoint(
                pending.jobId, kind, directory, pending.triggerId, where=p.here
            )
        )
    else:
        p.emit(
            actions.TriggerSavepoint(
                pending.jobId, kind, directory, pending.triggerId, pending.nonce, p.here
            )
        )


def trigger(p: context.Pass, spec: models.StreamJobSpec, kind: Kind, nonce: int | None) -> None:
    pending = begin(p, kind, nonce)
    if kind is Kind.PERIODIC:
        p.status.lastPeriodicSavepointTime = clock.format_time(p.now)
    p.write()
    request(p, pending)


def retain(p: context.Pass) -> None:
    spec = lifecycle.deployed_spec(p.status)
    if spec is None:
        return
    kept = retention(spec, p.status, p.now, p.seen.disposed)
    left = {e.location for e in p.status.savepointHistory} - {e.location for e in kept.history}
    p.status.savepointHistory = kept.history
    freed = len(left - p.seen.kept_files)  # the others had a SavepointNotDisposed
    if freed:
        p.event(NORMAL, "SavepointsDisposed", f"{freed} expired savepoint(s) disposed of")
    if kept.dispose:
        p.write()
        store = actions.ObjectStore.of(spec.config)
        for location in kept.dispose:
            p.emit(actions.DisposeSavepoint(location, store))
        p.soon()


def periodic(p: context.Pass, spec: models.StreamJobSpec) -> None:
    due = next_periodic(spec, p.status)
    if due is None or p.status.pendingSavepoint is not None:
        return
    if due > p.now:
        p.soon(due)
    elif p.seen.job_running and not p.savepoint_failed:
        trigger(p, spec, Kind.PERIODIC, None)
    else:
        p.soon()
