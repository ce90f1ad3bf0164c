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


class VertexInput(_Model):
    """An edge of the job graph, seen from its downstream vertex."""

    id: str = Field(description="The upstream vertex.")
    ship_strategy: str = Field(description="forward, hash, rebalance or broadcast (Flink's).")


class VertexInfo(_Model):
    id: str
    name: str
    operators: list[str]
    parallelism: int
    status: str
    records_in: int
    records_out: int
    backpressured_ms: int
    busy_ms: int = Field(
        default=0,
        description="Time the vertex's subtasks spent processing records, summed over subtasks.",
    )
    inputs: list[VertexInput] = Field(
        default_factory=list, description="The vertex's input edges (empty for a source)."
    )


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


class SubtaskCheckpointStats(_Model):
    """One subtask's acknowledgement of a checkpoint."""

    vertex: str
    subtask: int
    ack_ms: float = Field(description="From the trigger to this subtask's acknowledgement.")
    bytes: int
    sync_ms: float
    async_ms: float
    alignment_ms: float
    unaligned: bool = Field(False, description="This subtask took the checkpoint unaligned.")
    persisted_data_bytes: int = Field(
        0, description="In-flight data this subtask stored (channel state; part of bytes)."
    )


class CheckpointEntry(_Model):
    id: int
    kind: str = Field(description="checkpoint or savepoint")
    status: str
    trigger_timestamp: int
    duration_ms: float
    bytes: int
    alignment_ms: float
    unaligned: bool = Field(False, description="Some subtask took the checkpoint unaligned.")
    persisted_data_bytes: int = Field(
        0, description="In-flight data stored with the checkpoint (channel state)."
    )
    failure: str | None = None
    subtasks: list[SubtaskCheckpointStats] = Field(
        default_factory=list, description="The subtasks that acknowledged, in order of arrival."
    )


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


class CheckpointConfigInfo(_Model):
    """The job's ``execution.checkpointing.*`` settings."""

    enabled: bool
    interval_ms: int
    mode: str
    timeout_ms: int
    min_pause_ms: int
    max_concurrent: int
    tolerable_failures: int
    retained: int
    unaligned: bool = False
    aligned_checkpoint_timeout_ms: int = 0


class RestoreInfo(_Model):
    """The checkpoint or savepoint the current attempt started from."""

    id: int
    path: str
    kind: str = Field(description="checkpoint or savepoint")
    restore_timestamp: int = Field(description="When the attempt restored it (ms since epoch).")
    attempt: int


class CheckpointingStatistics(_Model):
    counts: CheckpointCounts
    latest_completed: CompletedCheckpointInfo | None
    history: list[CheckpointEntry]
    config: CheckpointConfigInfo | None = None
    latest_restored: RestoreInfo | None = None


class SavepointRequestInfo(_Model):
    """A savepoint, stop or cancel-with-savepoint request this JobManager received."""

    request_id: str
    operation: str = Field(description="savepoint, stop or cancel")
    trigger_timestamp: int
    status: SavepointStatus
    location: str | None = None
    failure_cause: str | None = None


class SavepointRequestList(_Model):
    requests: list[SavepointRequestInfo] = Field(description="Newest first.")


class JobConfigInfo(_Model):
    """What the job was submitted with, and the settings the JobManager derived from it."""

    jid: str
    name: str
    entrypoint: str
    args: list[str]
    parallelism: int
    max_parallelism: int
    savepoint_path: str | None
    allow_non_restored_state: bool
    config: dict[str, str] = Field(description="The submitted Flink-style options.")
    restart_strategy: str


class TaskManagerDetails(_Model):
    id: str
    host: str
    data_port: int
    pid: int
    slots_total: int
    slots_free: int
    last_heartbeat_ms_ago: int = Field(description="Milliseconds since its last message.")
    heartbeat_timeout_ms: int
    memory_rss_bytes: int | None = Field(
        default=None, description="Resident memory of the process, as it last reported."
    )


class TaskManagerList(_Model):
    taskmanagers: list[TaskManagerDetails]


class ExceptionEntry(_Model):
    timestamp: int
    attempt: int
    cause: str


class JobExceptions(_Model):
    root_exception: str | None
    history: list[ExceptionEntry]
