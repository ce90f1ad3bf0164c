"""REST models (pydantic).  Field names are the JSON names; Flink's where they exist."""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobStatus(enum.StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    FAILING = "FAILING"
    FAILED = "FAILED"
    CANCELLING = "CANCELLING"
    CANCELED = "CANCELED"
    FINISHED = "FINISHED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.FINISHED)


class ErrorResponse(_Model):
    error: str = Field(description="What went wrong and what to do about it.")


class JobSubmission(_Model):
    entrypoint: str = Field(description="Job file path or module with build(env).")
    args: list[str] = Field(default_factory=list, description="Passed to the job as env.args.")
    parallelism: int | None = Field(default=None, ge=1, description="Default parallelism.")
    config: dict[str, str] = Field(
        default_factory=dict,
        description="Flink-style options, e.g. execution.checkpointing.interval.",
    )
    savepoint_path: str | None = Field(
        default=None,
        description="Restore from this savepoint or retained checkpoint (directory or _metadata).",
    )
    allow_non_restored_state: bool = Field(
        default=False, description="Drop savepoint state of operators the job no longer has."
    )
    restore_from_latest_in: str | None = Field(
        default=None,
        description=(
            "A job's checkpoint directory (<checkpoint dir>/<job id>): restore from the newest"
            " completed checkpoint in it, or from savepoint_path when that is newer (a higher"
            " checkpoint id) or the directory has none; refused (400) when neither exists."
            " For a job its JobManager lost (it restarted without high availability)."
        ),
    )


TRIGGER_ID_PATTERN = r"^[0-9a-f]{32}$"
"""A client-chosen trigger id: 32 lowercase hex digits, as Flink's ``TriggerId``."""


def _check_trigger_id(value: str | None) -> str | None:
    if value is not None and re.fullmatch(TRIGGER_ID_PATTERN, value) is None:
        raise ValueError(
            f"{value!r} is not a trigger id: give 32 lowercase hex digits (as uuid.uuid4().hex),"
            " or leave trigger_id out and the JobManager chooses one"
        )
    return value


TriggerId = Annotated[
    str | None,
    AfterValidator(_check_trigger_id),
    Field(
        default=None,
        json_schema_extra={"pattern": TRIGGER_ID_PATTERN},
        description=(
            "Optional id chosen by the client (32 lowercase hex digits), as Flink's triggerId:"
            " it becomes the request id. A repeat with the same id returns the operation"
            " already started (in whatever state it is in) instead of starting another, so"
            " a client that lost the answer can send the request again."
        ),
    ),
]


class SavepointTriggerRequest(_Model):
    target_directory: str | None = Field(
        default=None,
        description="Directory under which the savepoint is written (default: the JobManager's).",
    )
    cancel_job: bool = Field(
        default=False, description="Cancel the job once the savepoint completes."
    )
    trigger_id: TriggerId = None


class StopRequest(_Model):
    target_directory: str | None = Field(
        default=None,
        description="Directory under which the savepoint is written (default: the JobManager's).",
    )
    drain: bool = Field(
        default=False,
        description="Advance event time to the end first, firing every window, before stopping.",
    )
    trigger_id: TriggerId = None


class TriggerResponse(_Model):
    request_id: str


class SavepointStatus(enum.StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class SavepointInfo(_Model):
    request_id: str
    status: SavepointStatus
    location: str | None = Field(
        default=None, description="The savepoint directory, once completed."
    )
    failure_cause: str | None = None


class JobSubmitted(_Model):
    jobid: str


class VertexInfo(_Model):
    id: str
    name: str
    operators: list[str]
    parallelism: int
    status: str
    records_in: int
    records_out: int
    backpressured_ms: int


class JobDetails(_Model):
    jid: str
    name: str
    state: JobStatus
    start_time: int
    end_time: int | None
    duration_ms: int
    restarts: int
    attempt: int
    restored_from: int | None = Field(description="Checkpoint id the current attempt restored.")
    failure_cause: str | None
    vertices: list[VertexInfo]


class JobOverview(_Model):
    jid: str
    name: str
    state: JobStatus
    start_time: int
    restarts: int


class JobList(_Model):
    jobs: list[JobOverview]


class ClusterOverview(_Model):
    taskmanagers: int
    slots_total: int
    slots_available: int
    jobs_running: int
    jobs_finished: int
    jobs_failed: int
    jobs_canceled: int
    version: str


class CheckpointEntry(_Model):
    id: int
    kind: str = Field(description="checkpoint or savepoint")
    status: str
    trigger_timestamp: int
    duration_ms: float
    bytes: int
    alignment_ms: float
    failure: str | None = None


class CompletedCheckpointInfo(_Model):
    id: int
    path: str
    trigger_timestamp: int
    duration_ms: float
    bytes: int
    alignment_ms: float


class CheckpointCounts(_Model):
    completed: int
    failed: int
    in_progress: int


class CheckpointingStatistics(_Model):
    counts: CheckpointCounts
    latest_completed: CompletedCheckpointInfo | None
    history: list[CheckpointEntry]


class ExceptionEntry(_Model):
    timestamp: int
    attempt: int
    cause: str


class JobExceptions(_Model):
    root_exception: str | None
    history: list[ExceptionEntry]
