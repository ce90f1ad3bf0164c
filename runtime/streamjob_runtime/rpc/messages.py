"""Control messages between the JobManager and TaskManagers (msgpack, tagged)."""

from __future__ import annotations

from typing import Any

import msgspec

from streamjob_runtime import config
from streamjob_runtime.graph import jobgraph


class Message(msgspec.Struct, tag=True, frozen=True):
    """Base of the control messages.

    msgspec passes ``frozen`` on to subclasses; they repeat ``frozen=True`` so
    that type checkers (``dataclass_transform``) see them as frozen too.
    """


# -- TaskManager -> JobManager ------------------------------------------------------------


class RegisterTaskManager(Message, frozen=True):
    tm_id: str
    host: str
    data_port: int
    slots: int
    pid: int


class Heartbeat(Message, frozen=True):
    tm_id: str
    # (job_id, attempt, vertex_id, subtask) -> counters, summed by the JobManager
    metrics: list[TaskMetrics] = []
    rss_bytes: int | None = None  # the process's resident memory, where the OS tells it


class TaskMetrics(msgspec.Struct, frozen=True):
    job_id: str
    attempt: int
    vertex_id: str
    subtask: int
    records_in: int
    records_out: int
    backpressured_ms: int
    busy_ms: int = 0  # time spent in the operators (emitting or processing records)


class TaskStateChanged(Message, frozen=True):
    job_id: str
    attempt: int
    vertex_id: str
    subtask: int
    state: str  # RUNNING, INPUT_ENDED, FINISHED, CANCELED, FAILED
    cause: str | None = None
    unrecoverable: bool = False


class StateHandle(msgspec.Struct, frozen=True):
    """One operator subtask's state file inside a checkpoint directory."""

    uid: str
    subtask: int
    file: str  # relative to the checkpoint directory
    size: int
    key_group_start: int
    key_group_end: int
    has_keyed: bool
    has_operator: bool
    # The subtask's channel state (in-flight data of an unaligned checkpoint), under
    # its chain's head operator; neither keyed nor operator state.
    has_channel_state: bool = False


class AcknowledgeCheckpoint(Message, frozen=True):
    job_id: str
    attempt: int
    checkpoint_id: int
    vertex_id: str
    subtask: int
    handles: list[StateHandle]
    bytes: int
    sync_ms: float
    async_ms: float
    alignment_ms: float
    unaligned: bool = False  # the subtask took the checkpoint unaligned
    channel_state_bytes: int = 0  # in-flight data persisted (part of ``bytes``)


class DeclineCheckpoint(Message, frozen=True):
    job_id: str
    attempt: int
    checkpoint_id: int
    vertex_id: str
    subtask: int
    reason: str


class TasksCanceled(Message, frozen=True):
    job_id: str
    attempt: int


# -- JobManager -> TaskManager ------------------------------------------------------------


class Registered(Message, frozen=True):
    tm_id: str
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    leader_epoch: int


class JobManagerHeartbeat(Message, frozen=True):
    """Sent every heartbeat interval: its absence tells a TaskManager the JobManager is gone."""


class RestoreSpec(msgspec.Struct, frozen=True):
    checkpoint_id: int
    job_id: str  # the job that wrote the checkpoint
    directory: str
    # uid -> (former parallelism, handles)
    operators: dict[str, tuple[int, list[StateHandle]]]


class SubtaskPlacement(msgspec.Struct, frozen=True):
    vertex_id: str
    subtask: int
    tm_id: str
    host: str
    data_port: int


class DeployTasks(Message, frozen=True):
    job_id: str
    attempt: int
    entrypoint: str
    args: list[str]
    config: config.JobConfig
    plan: list[jobgraph.VertexPlan]
    placements: list[SubtaskPlacement]
    checkpoint_dir: str  # where this job's checkpoints go
    restore: RestoreSpec | None


class TriggerCheckpoint(Message, frozen=True):
    """Sent to source tasks.  ``target``: the savepoint directory for state files
    (None: the job's checkpoint directory).  ``stop``: sources emit nothing after
    this barrier (stop- or cancel-with-savepoint); ``drain``: first advance event
    time to the end, firing every window.  ``aligned_timeout_ms``: None for an
    aligned checkpoint; otherwise the checkpoint may go unaligned (after that many
    ms of alignment; 0: at once) and every task, not just the sources, receives
    this message: it is the barrier that overtakes the in-flight data."""

    job_id: str
    attempt: int
    checkpoint_id: int
    timestamp: int
    target: str | None = None
    stop: bool = False
    drain: bool = False
    aligned_timeout_ms: int | None = None


class NotifyCheckpointComplete(Message, frozen=True):
    job_id: str
    attempt: int
    checkpoint_id: int


class AbortCheckpoint(Message, frozen=True):
    job_id: str
    attempt: int
    checkpoint_id: int


class CancelTasks(Message, frozen=True):
    job_id: str
    attempt: int


class FinishTasks(Message, frozen=True):
    """Input has ended everywhere and ``final_checkpoint_id`` completed: commit and exit."""

    job_id: str
    attempt: int
    final_checkpoint_id: int


ToJobManager = (
    RegisterTaskManager
    | Heartbeat
    | TaskStateChanged
    | AcknowledgeCheckpoint
    | DeclineCheckpoint
    | TasksCanceled
)
ToTaskManager = (
    Registered
    | JobManagerHeartbeat
    | DeployTasks
    | TriggerCheckpoint
    | NotifyCheckpointComplete
    | AbortCheckpoint
    | CancelTasks
    | FinishTasks
)

encoder = msgspec.msgpack.Encoder()
to_jobmanager = msgspec.msgpack.Decoder(ToJobManager)
to_taskmanager = msgspec.msgpack.Decoder(ToTaskManager)


class DataHello(msgspec.Struct, frozen=True):
    """First frame of a data connection: which input channel it feeds."""

    job_id: str
    attempt: int
    vertex_id: str
    subtask: int
    channel: int


hello_decoder = msgspec.msgpack.Decoder(DataHello)


def encode(message: Any) -> bytes:
    return encoder.encode(message)
