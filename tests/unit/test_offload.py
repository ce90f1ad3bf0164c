"""offload.to_thread: a worker thread gets the GIL from an event loop that never idles."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from streamjob_runtime.taskmanager import offload

STEPS = 50  # each releases the GIL and must take it back: a chance to starve
ROUNDS = 5000  # of about 1 ms of Python each: seconds, 50x what the steps need with nudges


def _steps(path: str) -> int:
    for _ in range(STEPS):
        os.stat(path)
    return STEPS


def _busy_round() -> None:
    table: dict[int, tuple[int, int]] = {}
    for i in range(20_000):
        table[i % 1000] = (i, i)


async def _rounds_until_done(
    call: Callable[[Callable[[str], int], str], Awaitable[int]], path: str
) -> int | None:
    """Rounds a busy task ran before ``call(_steps, path)`` returned; None if it never did."""
    work = asyncio.ensure_future(call(_steps, path))
    for n in range(ROUNDS):
        if work.done():
            assert work.result() == STEPS
            return n
        _busy_round()
        await asyncio.sleep(0)  # as a task loop yields: the loop polls, the GIL is retaken
    work.cancel()
    return None


def test_a_thread_finishes_its_work_while_the_loop_stays_busy(tmp_path: str) -> None:
    # With asyncio.to_thread this thread starved for seconds per step (see the module
    # docstring); the nudges give it the GIL within a round or two per step.
    rounds = asyncio.run(_rounds_until_done(offload.to_thread, str(tmp_path)))
    assert rounds is not None, f"{STEPS} steps not done after {ROUNDS} busy rounds"
    assert rounds < ROUNDS // 10


def test_nudges_stop_when_nothing_is_pending_and_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise OSError("disk gone")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert await offload.to_thread(sum, [1, 2]) == 3
        with pytest.raises(OSError, match="disk gone"):
            await offload.to_thread(fail)
        first = asyncio.ensure_future(offload.to_thread(sum, [1]))
        second = asyncio.ensure_future(offload.to_thread(sum, [2]))
        await asyncio.sleep(0)
        nudger = offload._nudgers[loop]
        assert nudger.pending == 2
        assert nudger.timer is not None
        assert [await first, await second] == [1, 2]
        assert nudger.pending == 0
        assert nudger.timer is None

    asyncio.run(scenario())
