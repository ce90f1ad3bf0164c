"""The contract between a task and the operators of its chain.

Records move in batches: ``values`` is a list of records and ``timestamps`` is
``None`` (no event time) or a list of the same length.  An operator pushes its
results synchronously into its :class:`Output`; the task awaits the network
only between input batches, which is where back-pressure applies.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from streamjob_runtime import config
from streamjob_runtime.graph import keygroups
from streamjob_runtime.state import storage

MIN_WATERMARK = -(2**63)
MAX_WATERMARK = 2**63 - 1

Batch = list[Any]
Timestamps = list[int] | None


class Output(Protocol):
    def emit(self, values: Batch, timestamps: Timestamps) -> None: ...

    def emit_watermark(self, watermark: int) -> None: ...


class UnrecoverableError(RuntimeError):
    """A failure that a restart cannot fix, as Flink's ``SuppressRestartsException``.

    For example bad user code, unpicklable state, or a sink's staged data that
    was removed outside the job (every restart would restore the same commit and
    fail the same way).  The JobManager fails the job at once with the message,
    whatever the restart strategy, instead of restarting it.
    """


@dataclass(frozen=True)
class OperatorContext:
    uid: str
    subtask_index: int
    parallelism: int
    max_parallelism: int
    attempt: int
    job_id: str
    state_backend: config.StateBackendConfig = field(default_factory=config.StateBackendConfig)
    s3: config.S3Config = field(default_factory=config.S3Config)  # the job's s3.* options

    @property
    def key_group_range(self) -> keygroups.KeyGroupRange:
        return keygroups.KeyGroupRange.for_subtask(
            self.subtask_index, self.max_parallelism, self.parallelism
        )


@dataclass
class OperatorSnapshot:
    """What one operator subtask returns at a checkpoint barrier.

    ``keyed``: state name -> {record key -> value}; redistributed by key group.
    ``operator``: a list of items redistributed by the operator itself on a
    restore at another parallelism (source splits, sink committables).
    """

    keyed: dict[str, dict[Any, Any]] = field(default_factory=dict)
    operator: list[Any] = field(default_factory=list)
    # Instead of ``keyed``: the asynchronous part of an incremental checkpoint of the keyed
    # state. Called off the event loop with the job's checkpoint directory, it uploads what
    # storage lacks and returns the picklable keyed part of the state file.
    incremental: Callable[[storage.Location], Any] | None = None

    def is_empty(self) -> bool:
        return not self.keyed and not self.operator and self.incremental is None


@dataclass
class RestoredState:
    """State handed to an operator subtask on restore.

    ``keyed`` holds only keys of this subtask's key groups.  ``operator`` holds
    the operator lists of *every* former subtask, ordered by former index; the
    operator picks its share (see :meth:`StreamOperator.initialize_state`).
    """

    checkpoint_id: int
    job_id: str
    keyed: dict[str, dict[Any, Any]]
    operator: list[list[Any]]
    former_parallelism: int
    # Keyed state of incremental checkpoints, not yet read: (the picklable keyed part a
    # snapshot's ``incremental`` returned, the local job directory holding its shared files:
    # a restore from object storage downloads them first).
    # The operator reads this subtask's key groups from them (see operators.keyed).
    keyed_incremental: list[tuple[Any, Path]] = field(default_factory=list)


def saved_watermark(watermark: int) -> list[Any]:
    """The operator state that saves ``watermark`` (none before the first one)."""
    return [watermark] if watermark > MIN_WATERMARK else []


def restored_watermark(restored: RestoredState) -> int:
    """The event time to resume an operator at: the lowest watermark its former subtasks saved.

    Event-time operators save their watermark as their operator state (a
    one-item list per subtask, see :func:`saved_watermark`); a restore that started them at
    :data:`MIN_WATERMARK` would accept records the failed attempt had already
    dropped as late.  The minimum is exact when every former subtask read the
    same input channels (a keyed exchange) and never later than any of them
    otherwise.  A former subtask that saved nothing (an older checkpoint)
    yields :data:`MIN_WATERMARK`.
    """
    saved = [former[0] if former else MIN_WATERMARK for former in restored.operator]
    return min(saved, default=MIN_WATERMARK)


class StreamOperator(abc.ABC):
    """One operator of a chain.  Never blocks: the task's event loop runs it.

    Only :meth:`process_batch` is abstract; the other hooks are optional and do
    nothing unless a subclass overrides them.
    """

    ctx: OperatorContext
    output: Output

    def setup(self, ctx: OperatorContext, output: Output) -> None:
        self.ctx = ctx
        self.output = output

    def initialize_state(self, restored: RestoredState | None) -> None:  # noqa: B027
        """Called once before the first record, with the state to restore, if any."""

    def open(self) -> None:  # noqa: B027
        """Called after :meth:`initialize_state`."""

    @abc.abstractmethod
    def process_batch(self, values: Batch, timestamps: Timestamps) -> None: ...

    def process_watermark(self, watermark: int) -> None:
        self.output.emit_watermark(watermark)

    def on_processing_time(self, now_ms: int) -> None:  # noqa: B027
        """Called regularly by the task: fire processing-time timers due by ``now_ms``."""

    def end_input(self) -> None:  # noqa: B027
        """All input is consumed (bounded input or drain): flush what is pending."""

    def snapshot_state(self, checkpoint_id: int) -> OperatorSnapshot:
        """Synchronous part of a checkpoint: a consistent copy of this operator's state."""
        return OperatorSnapshot()

    def snapshot_state_incremental(self, checkpoint_id: int) -> OperatorSnapshot | None:
        """Like :meth:`snapshot_state` for a checkpoint (never a savepoint), incremental.

        ``None`` (the default): take :meth:`snapshot_state`.  Savepoints always take
        :meth:`snapshot_state`, the full and backend-independent form.
        """
        return None

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` is durable: commit what it covers."""

    def close(self) -> None:  # noqa: B027
        """Release resources; called on finish and on cancellation."""
