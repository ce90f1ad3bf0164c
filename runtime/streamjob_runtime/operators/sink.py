"""Sinks with two-phase commit, and the operator that drives them."""

from __future__ import annotations

import abc
import logging
from typing import Any

from streamjob_runtime import logs
from streamjob_runtime.operators import base

log = logging.getLogger(__name__)


class SinkWriter(abc.ABC):
    """Writes one sink subtask's records as transactions.

    ``prepare_commit`` (pre-commit, at a checkpoint barrier) makes the records
    written since the last call durable but invisible and returns committables;
    ``commit`` makes them visible and must be idempotent: it runs again for the
    same committables after a restore.
    """

    @abc.abstractmethod
    def write(self, values: list[Any]) -> None: ...

    @abc.abstractmethod
    def prepare_commit(self, checkpoint_id: int) -> list[Any]: ...

    @abc.abstractmethod
    def commit(self, committables: list[Any]) -> None: ...

    def discard_staged(self, keep: list[Any], restored_job_id: str | None) -> None:  # noqa: B027
        """After a restore: drop staged data not covered by ``keep`` (the restored committables)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files; staged data stays for a later commit or discard."""


class Sink(abc.ABC):
    @abc.abstractmethod
    def create_writer(self, ctx: base.OperatorContext) -> SinkWriter: ...


class SinkOperator(base.StreamOperator):
    """Stages records at every checkpoint and commits them when it completes.

    Its operator state is the list of ``(checkpoint_id, committable)`` not yet
    known to be committed, so a restore finishes the commits of the restored
    checkpoint.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.pending: list[tuple[int, Any]] = []

    def setup(self, ctx: base.OperatorContext, output: base.Output) -> None:
        super().setup(ctx, output)
        self.writer = self.sink.create_writer(ctx)

    def initialize_state(self, restored: base.RestoredState | None) -> None:
        if restored is None:
            self.writer.discard_staged([], None)
            return
        everything = [c for former in restored.operator for _, c in former]
        # Each former subtask's commits are finished by exactly one new subtask.
        mine = [
            c
            for index, former in enumerate(restored.operator)
            if index % self.ctx.parallelism == self.ctx.subtask_index
            for _, c in former
        ]
        if mine:
            self.writer.commit(mine)
            logs.event(
                log,
                "sink_commits_restored",
                uid=self.ctx.uid,
                subtask=self.ctx.subtask_index,
                checkpoint_id=restored.checkpoint_id,
                committables=len(mine),
            )
        self.writer.discard_staged(everything, restored.job_id)

    def process_batch(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        self.writer.write(values)

    def process_watermark(self, watermark: int) -> None:
        pass

    def snapshot_state(self, checkpoint_id: int) -> base.OperatorSnapshot:
        for committable in self.writer.prepare_commit(checkpoint_id):
            self.pending.append((checkpoint_id, committable))
        return base.OperatorSnapshot(operator=list(self.pending))

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        due = [c for cid, c in self.pending if cid <= checkpoint_id]
        if due:
            self.writer.commit(due)
            self.pending = [(cid, c) for cid, c in self.pending if cid > checkpoint_id]

    def close(self) -> None:
        self.writer.close()
