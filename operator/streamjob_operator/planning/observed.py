"""What observing gathered in one pass: the input of planning, besides spec and status.

Observing reads Kubernetes and the JobManager's REST API and never mutates either; it
fills this in and planning decides from it. ``None`` means "not known this pass" (not
reachable, not asked, or absent), and the fields say which.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum

from streamjob_operator.desired import target
from streamjob_runtime.api import models as rest


class DeploymentState(enum.StrEnum):
    ABSENT = "absent"
    PROGRESSING = "progressing"  # exists, not every replica ready (or being deleted)
    READY = "ready"


@dataclasses.dataclass(frozen=True)
class Meta:
    """The StreamJob's identity and the metadata planning reads."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    deletion_timestamp: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class HaCheckpoint:
    """The latest checkpoint pointer in the HA metadata (ConfigMap) of the status' job."""

    checkpoint_id: int
    path: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A submission the JobManager refused (HTTP 400: the job cannot be built from it),
    as acting reported it at ``at``. Submitting the same again fails the same way."""

    submission: rest.JobSubmission
    message: str
    at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Cluster:
    """One colour's cluster as a blue-green step needs it (``Observed.cluster``).

    ``slots``: the slots its TaskManagers registered with the JobManager (``GET
    /overview``); None when not asked or not reachable. ``jobs``: what the JobManager
    lists (meaningful only when ``rest_reachable``).
    """

    color: target.Color | None
    jobmanager: DeploymentState = DeploymentState.ABSENT
    taskmanager: DeploymentState = DeploymentState.ABSENT
    rest_reachable: bool = False
    jobs: tuple[rest.JobOverview, ...] = ()
    slots: int | None = None

    @property
    def deployments_absent(self) -> bool:
        return (
            self.jobmanager is DeploymentState.ABSENT and self.taskmanager is DeploymentState.ABSENT
        )


@dataclasses.dataclass(frozen=True)
class Observed:
    """One pass's observation.

    - ``jobmanager`` / ``taskmanager``: the state of the current deployment's Deployments.
    - ``rest_reachable``: the JobManager's REST API answered this pass. When it did not,
      ``jobs``, ``job``, ``checkpoints`` and ``savepoint`` are None or empty and mean
      nothing; when it did, a None ``job`` means the JobManager does not know the job.
    - ``jobs``: every job the JobManager lists (to adopt a job submitted by a pass that
      crashed before it could record the job's id).
    - ``job`` / ``checkpoints``: details and checkpoint statistics of ``status.job.id``.
    - ``savepoint``: the state of ``status.pendingSavepoint.triggerId``; None when the
      JobManager does not know the request (or there is none, or it was not reachable).
    - ``ha_checkpoint``: the latest checkpoint in the HA metadata, when HA is on and it
      names one (readable even when no JobManager runs).
    - ``disposed``: savepoint locations acting has disposed of (or found gone), so the
      history can drop them; a location disposed of but forgotten (operator restart) is
      disposed of again, which is a no-op.
    - ``kept_files``: of ``disposed``, the locations whose files remain (the operator does
      not mount them, or they are not savepoints): they leave the history too, but were
      reported by a Warning and are not counted as disposed of.
    - ``refused``: the last submission a JobManager refused, until one is accepted
      (acting's memory, like ``disposed``; an operator restart forgets it, and the next
      submission learns it again).
    - ``color``: the cluster the fields above describe, the one of ``status.job``
      (``planning.bluegreen.job_target``): None for the uncoloured cluster of
      ``recreate``. ``other``: during a blue-green upgrade or fallback, the other
      colour's cluster (``planning.bluegreen.other_target``); None otherwise.
    """

    meta: Meta
    jobmanager: DeploymentState = DeploymentState.ABSENT
    taskmanager: DeploymentState = DeploymentState.ABSENT
    rest_reachable: bool = False
    jobs: tuple[rest.JobOverview, ...] = ()
    job: rest.JobDetails | None = None
    checkpoints: rest.CheckpointingStatistics | None = None
    savepoint: rest.SavepointInfo | None = None
    ha_checkpoint: HaCheckpoint | None = None
    disposed: frozenset[str] = frozenset()
    kept_files: frozenset[str] = frozenset()
    refused: Refusal | None = None
    color: target.Color | None = None
    other: Cluster | None = None

    def cluster(self, color: target.Color | None) -> Cluster | None:
        """The cluster of ``color`` as observed this pass; None when it was not."""
        if color == self.color:
            return Cluster(color, self.jobmanager, self.taskmanager, self.rest_reachable, self.jobs)
        if self.other is not None and self.other.color == color:
            return self.other
        return None

    @property
    def deployments_absent(self) -> bool:
        return (
            self.jobmanager is DeploymentState.ABSENT and self.taskmanager is DeploymentState.ABSENT
        )

    @property
    def job_alive(self) -> bool:
        """A job that is still going (not in a terminal state) on a reachable JobManager."""
        return self.rest_reachable and self.job is not None and not self.job.state.terminal

    @property
    def job_running(self) -> bool:
        return self.job_alive and self.job is not None and self.job.state is rest.JobStatus.RUNNING
