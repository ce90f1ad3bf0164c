"""Input gates: bounded channels and cancellation."""

from __future__ import annotations

import asyncio

from streamjob_runtime.taskmanager import network


def test_a_task_waiting_on_the_gate_is_cancelled_even_when_a_record_arrives_at_once() -> None:
    # With asyncio.wait_for, CPython 3.11 loses a cancel that races with the wakeup
    # (gh-86296): the task kept running and its TaskManager hung cancelling it.
    async def scenario() -> bool:
        gate = network.InputGate(1, 8)

        async def consume() -> None:
            while True:
                await gate.next(0.1)

        runner = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        await gate.channels[0].put(("b", [1], None))
        runner.cancel()  # in the same turn as the record
        done, _ = await asyncio.wait([runner], timeout=2)
        return runner in done and runner.cancelled()

    assert asyncio.run(scenario())


def test_a_full_channel_blocks_the_writer_until_the_reader_takes_an_element() -> None:
    async def scenario() -> None:
        gate = network.InputGate(1, 2)
        channel = gate.channels[0]
        await channel.put(("w", 1))
        await channel.put(("w", 2))
        third = asyncio.create_task(channel.put(("w", 3)))
        await asyncio.sleep(0.05)
        assert not third.done(), "a full channel accepted more"
        assert await gate.next() == (0, ("w", 1))
        await asyncio.wait_for(third, 1)
        assert len(channel.queue) == 2

    asyncio.run(scenario())


def test_a_blocked_channel_is_not_read_until_unblocked() -> None:
    async def scenario() -> None:
        gate = network.InputGate(2, 4)
        await gate.channels[0].put(("w", 1))
        await gate.channels[1].put(("w", 2))
        gate.blocked.add(0)
        assert await gate.next() == (1, ("w", 2))
        assert await gate.next(0.05) is None
        gate.blocked.clear()
        assert await gate.next() == (0, ("w", 1))

    asyncio.run(scenario())
