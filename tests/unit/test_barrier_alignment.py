"""Barrier alignment in a running task: late barriers of finished checkpoints are ignored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.rpc import messages
from streamjob_runtime.taskmanager import network, task


def two_input_task(tmp_path: Path, reports: list[messages.Message]) -> task.Task:
    """The map -> sink subtask of a job whose one source feeds it over two channels."""
    env = StreamExecutionEnvironment().set_parallelism(2)
    env.from_source(GeneratorSource(lambda i: i, 10)).set_parallelism(1).map(str).sink_to(
        FileSink(str(tmp_path / "out"))
    )

    async def report(message: messages.Message) -> None:
        reports.append(message)

    return downstream_task(env, tmp_path, report)


async def _ignore(message: messages.Message) -> None:
    pass


def downstream_task(
    env: StreamExecutionEnvironment,
    tmp_path: Path,
    report: Callable[[messages.Message], Awaitable[None]] = _ignore,
) -> task.Task:
    """Subtask 0 of ``env``'s second vertex (parallelism 2): two input channels the test
    feeds through its gate, no output writers, checkpoints under ``tmp_path``."""
    return task.Task(
        job_id="job",
        attempt=1,
        vertex=env.job_graph().vertices[1],
        subtask=0,
        job_config=config.JobConfig(parallelism=2),
        gate=network.InputGate(2, 8),
        writers=[],
        checkpoint_dir=str(tmp_path / "checkpoints"),
        restore=None,
        report=report,
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(5):
            while not condition():  # noqa: ASYNC110 - polls the task's plain attributes
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def running(t: task.Task, scenario: Callable[[], Awaitable[None]]) -> None:
    runner = asyncio.create_task(t.run())
    try:
        await scenario()
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        t.close()


def test_a_late_barrier_of_an_aborted_checkpoint_does_not_block_its_channel(
    tmp_path: Path,
) -> None:
    reports: list[messages.Message] = []
    t = two_input_task(tmp_path, reports)
    gate = t.gate
    assert gate is not None

    async def scenario() -> None:
        await gate.channels[0].put(("c", 1, 0, None))
        await until(lambda: gate.blocked == {0}, "channel 0 blocked by barrier 1")
        t.abort_checkpoint(1)  # checkpoint 1 expired: the JobManager aborts it
        assert gate.blocked == set()
        # Barrier 1 arrives late on channel 1, then records follow on both channels.
        await gate.channels[1].put(("c", 1, 0, None))
        await gate.channels[1].put(("b", ["a", "b"], None))
        await gate.channels[0].put(("b", ["c"], None))
        await until(lambda: t.records_in == 3, "every record processed")
        assert gate.blocked == set()
        # The next checkpoint aligns and completes as usual.
        await gate.channels[0].put(("c", 2, 0, None))
        await gate.channels[1].put(("c", 2, 0, None))
        await until(
            lambda: any(isinstance(m, messages.AcknowledgeCheckpoint) for m in reports),
            "checkpoint 2 acknowledged",
        )
        acks = [m for m in reports if isinstance(m, messages.AcknowledgeCheckpoint)]
        assert [a.checkpoint_id for a in acks] == [2]

    asyncio.run(running(t, scenario))


def test_a_barrier_aborted_before_it_arrives_is_ignored_on_every_channel(tmp_path: Path) -> None:
    reports: list[messages.Message] = []
    t = two_input_task(tmp_path, reports)
    gate = t.gate
    assert gate is not None

    async def scenario() -> None:
        t.abort_checkpoint(3)  # the abort overtakes barrier 3, still upstream
        await gate.channels[0].put(("c", 3, 0, None))
        await gate.channels[0].put(("b", ["a"], None))
        await until(lambda: t.records_in == 1, "the record behind the late barrier")
        assert gate.blocked == set()

    asyncio.run(running(t, scenario))
