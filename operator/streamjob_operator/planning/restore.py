"""What the next job restores from when no stop-with-savepoint is to be had.

``savepoint`` mode: the latest checkpoint stands in only when it is younger than
``checkpointing.maxAge``; otherwise the upgrade is blocked and says why (the job is
left alone). ``last-state``: the latest checkpoint (the JobManager's, the HA
metadata's or the last one status saw), else the path the job restored from.
``stateless``: empty state. A rollback restores from the restore path of the upgrade.
No choice falls back to empty state by itself.
"""

from __future__ import annotations

import dataclasses
import datetime

from streamjob_operator.api import models
from streamjob_operator.planning import clock, context


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    id: int
    path: str
    time: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class Restore:
    path: str | None
    note: str | None = None  # a warning to give once the old job is gone


@dataclasses.dataclass(frozen=True)
class Blocked:
    message: str


def latest_checkpoint(p: context.Pass) -> Checkpoint | None:
    found: list[Checkpoint] = []
    last = p.status.lastCheckpoint
    if last is not None:
        found.append(Checkpoint(last.id, last.path, clock.parse_time(last.time)))
    ha = p.seen.ha_checkpoint
    if ha is not None and (last is None or ha.checkpoint_id > last.id):
        found.append(Checkpoint(ha.checkpoint_id, ha.path, None))
    return max(found, key=lambda c: c.id, default=None)


def choose_restore(
    p: context.Pass, spec: models.StreamJobSpec, rolling_back: bool
) -> Restore | Blocked:
    """What the next job restores from, when no stop-with-savepoint is to be had."""
    mode = spec.job.upgradeMode
    purpose = "suspend" if spec.job.state is models.DesiredJobState.SUSPENDED else "upgrade"
    if rolling_back:
        return Restore(p.r.restorePath)
    if mode is models.UpgradeMode.STATELESS:
        return Restore(None)
    latest = latest_checkpoint(p)
    if mode is models.UpgradeMode.LAST_STATE:
        if latest is not None:
            return Restore(latest.path)
        if p.r.restorePath is not None:
            return Restore(p.r.restorePath)  # no checkpoint since it restored
        return Blocked(
            f"cannot {purpose} with last-state: the job has no checkpoint to restore from;"
            " the job was left as it is. Wait for a checkpoint, or set job.upgradeMode:"
            " stateless to start from empty state"
        )
    job_state = p.status.job.state if p.seen.rest_reachable else "unreachable"
    head = (
        f"cannot {purpose} with a savepoint: the job is not running ({job_state or 'not deployed'})"
    )
    tail = (
        "; the job was left as it is. Get the job running again, raise"
        " checkpointing.maxAge, or set job.upgradeMode: stateless to start from empty state"
    )
    max_age = spec.checkpointing.maxAge
    if max_age is None:
        return Blocked(f"{head}, and checkpointing.maxAge is not set{tail}")
    if latest is None:
        return Blocked(f"{head}, and it has no checkpoint{tail}")
    if latest.time is None:
        return Blocked(f"{head}, and the age of checkpoint {latest.id} is unknown{tail}")
    age = p.now - latest.time
    if age > clock.duration(max_age):
        return Blocked(
            f"{head}, and its latest checkpoint ({latest.id}, taken"
            f" {clock.format_time(latest.time)}) is older than checkpointing.maxAge"
            f" ({max_age}){tail}"
        )
    return Restore(
        latest.path,
        f"the job is not running, so no savepoint can be taken: restoring from checkpoint"
        f" {latest.id} ({latest.path}), younger than checkpointing.maxAge ({max_age})",
    )
