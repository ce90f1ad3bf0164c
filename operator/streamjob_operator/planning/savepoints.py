"""Savepoint bookkeeping: records, history retention, periodic triggers.

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
from streamjob_operator.planning import actions, clock


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
