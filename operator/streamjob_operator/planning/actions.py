"""What planning asks acting to do: a :class:`Plan` of actions, in order, and a status.

Acting takes the actions in order and stops at the first that fails (the next pass
plans again from what it then observes); then it records ``Plan.status``. One action
returns what status must keep, and acting writes it at once, before anything else:
:class:`SubmitJob` returns the job id (into ``status.job.id``). A savepoint's request id
is not returned but chosen by planning (:func:`savepoints.trigger_id`): the
:class:`WriteStatus` before :class:`TriggerSavepoint` or :class:`StopWithSavepoint`
records it in ``status.pendingSavepoint.triggerId``, and the request carries it, so an
operator that dies once the request is sent finds it again under that id.

The JobManager actions (:class:`SubmitJob`, :class:`TriggerSavepoint`,
:class:`StopWithSavepoint`, :class:`CancelJob`) name the cluster they go to
(``where``: the uncoloured one of ``recreate``, or a colour's during blue-green).

Destructive actions (:data:`DESTRUCTIVE`) stop a job, remove pods, replace them, or
delete data. A plan never holds one without a :class:`WriteStatus` before it that
records the target spec and step: status is the write-ahead log of the reconcile loop.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TypeVar

from streamjob_operator.api import models
from streamjob_operator.desired import target
from streamjob_runtime.api import models as rest


class SavepointKind(enum.StrEnum):
    """Why a savepoint was taken (``SavepointRecord.trigger``)."""

    MANUAL = "manual"
    PERIODIC = "periodic"
    UPGRADE = "upgrade"
    SUSPEND = "suspend"
    DELETE = "delete"


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class WriteStatus:
    """Write this status now, before the actions that follow it."""

    status: models.StreamJobStatus


@dataclasses.dataclass(frozen=True)
class ApplyChildren:
    """Create or update every child of ``job`` for ``where`` (``desired.children``)."""

    job: target.StreamJob
    where: target.DeploymentTarget


@dataclasses.dataclass(frozen=True)
class DeleteJobManager:
    """Delete the JobManager Deployment of ``where`` (absent is fine)."""

    where: target.DeploymentTarget


@dataclasses.dataclass(frozen=True)
class DeleteTaskManager:
    """Delete the TaskManager Deployment of ``where`` (absent is fine)."""

    where: target.DeploymentTarget


@dataclasses.dataclass(frozen=True)
class DeleteHaMetadata:
    """Delete the HA ConfigMap of ``where``'s cluster, then its leader Lease (``desired.ha``).

    A new JobManager would otherwise recover the old job graph from it instead of
    running the one planning submits.
    """

    where: target.DeploymentTarget


@dataclasses.dataclass(frozen=True)
class DeleteChildren:
    """Delete every child of ``where``'s cluster (``desired.children``: Deployments in the
    foreground, Service, ConfigMap, RBAC) and its HA ConfigMap; absent ones are fine.
    A blue-green upgrade removes the colour it leaves this way."""

    where: target.DeploymentTarget


HERE = target.DeploymentTarget()


@dataclasses.dataclass(frozen=True)
class SubmitJob:
    """``POST /jobs``; the submission's ``savepoint_path`` is the restore path (or None)."""

    submission: rest.JobSubmission
    where: target.DeploymentTarget = HERE


@dataclasses.dataclass(frozen=True)
class TriggerSavepoint:
    """``POST /jobs/{job_id}/savepoints`` into ``directory`` under ``trigger_id``; the job
    keeps running."""

    job_id: str
    kind: SavepointKind
    directory: str | None
    trigger_id: str
    nonce: int | None = None
    where: target.DeploymentTarget = HERE


@dataclasses.dataclass(frozen=True)
class StopWithSavepoint:
    """``POST /jobs/{job_id}/stop`` into ``directory`` under ``trigger_id``: the job
    finishes after the savepoint."""

    job_id: str
    kind: SavepointKind
    directory: str | None
    trigger_id: str
    where: target.DeploymentTarget = HERE


@dataclasses.dataclass(frozen=True)
class CancelJob:
    """``PATCH /jobs/{job_id}?mode=cancel`` (a job that already ended is fine)."""

    job_id: str
    where: target.DeploymentTarget = HERE


@dataclasses.dataclass(frozen=True)
class ObjectStore:
    """Where the job's ``s3://`` locations live, from its ``s3.*`` options (``None``: the
    operator's environment decides). Credentials are never among them: the operator
    deletes with its own."""

    endpoint: str | None = None  # s3.endpoint
    region: str | None = None  # s3.region
    path_style_access: bool | None = None  # s3.path.style.access

    @classmethod
    def of(cls, options: dict[str, str]) -> ObjectStore:
        style = options.get("s3.path.style.access", "").strip().lower()
        return cls(
            options.get("s3.endpoint") or None,
            options.get("s3.region") or None,
            {"true": True, "false": False}.get(style),
        )


@dataclasses.dataclass(frozen=True)
class DisposeSavepoint:
    """Delete the savepoint at ``location``; a location that is gone already is fine.
    ``store`` says where an ``s3://`` location is (the job's options)."""

    location: str
    store: ObjectStore = ObjectStore()


@dataclasses.dataclass(frozen=True)
class RecordEvent:
    type: EventType
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class FinishDeletion:
    """Nothing is left to do before the StreamJob goes: release its finalizer."""


@dataclasses.dataclass(frozen=True)
class RequeueAfter:
    """Reconcile again after this long (at most one, the last action)."""

    seconds: float


Action = (
    WriteStatus
    | ApplyChildren
    | DeleteJobManager
    | DeleteTaskManager
    | DeleteHaMetadata
    | DeleteChildren
    | SubmitJob
    | TriggerSavepoint
    | StopWithSavepoint
    | CancelJob
    | DisposeSavepoint
    | RecordEvent
    | FinishDeletion
    | RequeueAfter
)

DESTRUCTIVE: tuple[type[Action], ...] = (
    ApplyChildren,
    DeleteJobManager,
    DeleteTaskManager,
    DeleteHaMetadata,
    DeleteChildren,
    StopWithSavepoint,
    CancelJob,
    DisposeSavepoint,
)

A = TypeVar("A")


@dataclasses.dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    status: models.StreamJobStatus

    def of_type(self, kind: type[A]) -> list[A]:
        return [a for a in self.actions if isinstance(a, kind)]

    @property
    def events(self) -> list[RecordEvent]:
        return self.of_type(RecordEvent)

    @property
    def requeue_after(self) -> float | None:
        found = self.of_type(RequeueAfter)
        return found[-1].seconds if found else None
