"""The HA contract: a leader elector and a metadata store whose writes are fenced.

The leader's *epoch* is a number that grows with every change of leader (an
etcd key's create revision, a Lease's leaseTransitions).  Every write to the HA
metadata names the writer's epoch and is conditional on it still being the
current one, so a deposed leader (paused, partitioned) cannot overwrite what
its successor wrote: its write fails with :class:`FencedError`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from streamjob_runtime import config


class FencedError(RuntimeError):
    """A write was rejected because the writer is no longer the leader."""


class WriteOutcomeUnknown(FencedError):
    """A write whose answer never came (a timeout, a dropped connection): it may have
    landed. The writer steps down as for a fenced write, but must not act as if the
    store still held the old value: a successor may read the new one (a checkpoint the
    write named must keep its files)."""


class HaKind(enum.StrEnum):
    NONE = "none"
    ETCD = "etcd"
    KUBERNETES = "kubernetes"


class HaConfig(msgspec.Struct, frozen=True):
    """Leader election settings, with client-go's meaning and defaults (15 s / 10 s / 2 s)."""

    kind: HaKind = HaKind.NONE
    cluster_id: str = "default"
    lease_duration_ms: int = 15_000
    renew_deadline_ms: int = 10_000
    retry_period_ms: int = 2_000
    etcd_endpoints: tuple[str, ...] = ()
    namespace: str = "default"
    pod_name: str | None = None  # Kubernetes: the leader labels its own pod

    def validate(self) -> None:
        if self.kind is HaKind.NONE:
            return
        if not self.cluster_id or "/" in self.cluster_id:
            raise config.ConfigError(f"HA cluster id {self.cluster_id!r} must be non-empty, no '/'")
        if not self.lease_duration_ms > self.renew_deadline_ms > self.retry_period_ms > 0:
            raise config.ConfigError(
                f"HA timings must satisfy lease duration ({self.lease_duration_ms} ms) > renew"
                f" deadline ({self.renew_deadline_ms} ms) > retry period"
                f" ({self.retry_period_ms} ms) > 0: a leader must give up before its lease can"
                " expire for others, and retry several times before giving up"
            )
        if self.kind is HaKind.ETCD:
            if not self.etcd_endpoints:
                raise config.ConfigError("HA with etcd needs --ha-etcd-endpoints HOST:PORT")
            if self.lease_duration_ms < 2_000:
                raise config.ConfigError(
                    "etcd leases last whole seconds and at least 2 s: set the lease duration"
                    " to 2000 ms or more"
                )
            for endpoint in self.etcd_endpoints:
                host, _, port = endpoint.rpartition(":")
                if not host or not port.isdigit():
                    raise config.ConfigError(f"etcd endpoint {endpoint!r} must be HOST:PORT")


class LeaderInfo(msgspec.Struct, frozen=True):
    """What the leader publishes: how TaskManagers and clients reach it."""

    identity: str
    epoch: int
    rpc_host: str
    rpc_port: int
    rest_url: str


class JobRecord(msgspec.Struct, frozen=True):
    """A job as the HA metadata keeps it: enough for a new leader to recover it."""

    job_id: str
    submission: bytes  # the REST JobSubmission, JSON


class TriggerRecord(msgspec.Struct, frozen=True):
    """The outcome of a savepoint request (Flink's trigger), kept in the HA metadata
    beyond its job's end, so that a new leader answers it and does not resume a job
    that was stopped with a savepoint before the leader changed. The newest
    :data:`TRIGGERS_KEPT` are kept."""

    job_id: str
    request_id: str
    operation: str  # "savepoint", "stop" or "cancel"
    status: str  # "COMPLETED" or "FAILED"
    location: str | None = None
    failure_cause: str | None = None
    time_ms: int = 0


TRIGGERS_KEPT = 16


def newest_triggers(records: list[TriggerRecord]) -> list[TriggerRecord]:
    """The :data:`TRIGGERS_KEPT` newest of ``records``, oldest first."""
    return sorted(records, key=lambda r: (r.time_ms, r.request_id))[-TRIGGERS_KEPT:]


class CheckpointPointer(msgspec.Struct, frozen=True):
    checkpoint_id: int
    path: str
    kind: str = "checkpoint"  # or "savepoint" (never trimmed by retention)


class CheckpointRecord(msgspec.Struct, frozen=True):
    """The retained completed checkpoints of a job (newest last), its id counter, and its
    latest execution attempt (attempt numbers name staged sink files: they must grow
    across a change of leader too)."""

    next_checkpoint_id: int = 1
    retained: tuple[CheckpointPointer, ...] = ()
    attempt: int = 0


Elected = Callable[[int], Awaitable[None]]
Revoked = Callable[[str], Awaitable[None]]


class LeaderElector(Protocol):
    identity: str

    async def run(self, on_elected: Elected, on_revoked: Revoked) -> None:
        """Campaign until elected, call ``on_elected(epoch)``, then renew.

        If the lease cannot be renewed within the renew deadline, call
        ``on_revoked(reason)`` and return: the caller must stop acting as leader.
        """

    async def release(self) -> None:
        """Give up leadership at once (clean shutdown), so a standby need not wait."""


class HaStore(Protocol):
    async def withdraw(self) -> None:
        """Make sure nothing routes to this JobManager as the leader, before it
        campaigns: a standby that passes its readiness check must not be selected as
        the leader (Kubernetes: set the pod's leader label to false, which a previous
        process in the same pod may have left; etcd: nothing to undo). Raises when it
        could not (the caller retries)."""

    async def publish_leader(self, epoch: int, leader: LeaderInfo) -> None: ...

    async def leader(self) -> LeaderInfo | None: ...

    async def put_job(self, epoch: int, job: JobRecord) -> None: ...

    async def remove_job(self, epoch: int, job_id: str) -> None: ...

    async def jobs(self) -> list[JobRecord]: ...

    async def put_checkpoints(self, epoch: int, job_id: str, record: CheckpointRecord) -> None: ...

    async def checkpoints(self, job_id: str) -> CheckpointRecord: ...

    async def put_trigger(self, epoch: int, record: TriggerRecord) -> None:
        """Record a savepoint request's outcome (fenced), dropping all but the newest
        :data:`TRIGGERS_KEPT`."""

    async def triggers(self) -> list[TriggerRecord]:
        """The recorded savepoint request outcomes, oldest first."""

    async def close(self) -> None: ...


encode = msgspec.json.encode
