"""How a TaskManager finishes a job's tasks after the final checkpoint (``FinishTasks``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from streamjob_runtime.rpc import messages
from streamjob_runtime.taskmanager import executor


class _Task:
    """What ``TaskExecutor._finish`` uses of a task: the final commit can be made to fail."""

    def __init__(self, vertex: str, subtask: int, commit_error: Exception | None = None) -> None:
        self.job_id, self.attempt, self.subtask, self.name = "job", 3, subtask, vertex
        self.vertex = SimpleNamespace(id=vertex)
        self.config = SimpleNamespace(state_backend=SimpleNamespace(local_recovery=False))
        self.commit_error = commit_error
        self.committed: list[int] = []
        self.closed = False

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed.append(checkpoint_id)

    def close(self) -> None:
        self.closed = True


def _finish(tasks: list[_Task]) -> list[tuple[str, int, str]]:
    """The task states the TaskManager reports for ``tasks`` after ``FinishTasks``."""
    sent: list[Any] = []

    async def scenario() -> None:
        tm = executor.TaskExecutor(executor.fixed_address(("127.0.0.1", 1)))

        async def send(message: messages.Message) -> None:
            sent.append(message)

        tm.send = send  # type: ignore[method-assign]
        deployment = executor.Deployment("job", 3)
        for t in tasks:
            deployment.tasks[(t.vertex.id, t.subtask)] = t  # type: ignore[assignment]
        tm.deployments["job"] = deployment
        await tm._finish(messages.FinishTasks("job", 3, 9))
        assert "job" not in tm.deployments

    asyncio.run(scenario())
    return [(m.vertex_id, m.subtask, m.state) for m in sent]


def test_every_task_commits_the_final_checkpoint_and_is_reported_finished() -> None:
    tasks = [_Task("sink", 0), _Task("sink", 1)]
    assert _finish(tasks) == [("sink", 0, "FINISHED"), ("sink", 1, "FINISHED")]
    assert [t.committed for t in tasks] == [[9], [9]]
    assert all(t.closed for t in tasks)


def test_a_task_whose_final_commit_fails_is_reported_failed_and_not_finished() -> None:
    tasks = [_Task("sink", 0, OSError("the bucket is gone")), _Task("sink", 1)]
    assert _finish(tasks) == [("sink", 0, "FAILED"), ("sink", 1, "FINISHED")]
    assert all(t.closed for t in tasks)
