"""Input gates: bounded channels and cancellation."""

from __future__ import annotations

import asyncio

from streamjob_runtime.rpc import framing
from streamjob_runtime.taskmanager import network, wire


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


def test_a_remote_writer_sends_a_flush_of_elements_over_a_socket_in_order() -> None:
    elements: list[network.Element] = [
        ("b", [(1, 2), (3, 4)], None),
        ("w", 10),
        ("b", ["a"], [5]),
        ("c", 7, 1000, None),
        ("e",),
    ]

    async def scenario() -> list[network.Element]:
        received: list[network.Element] = []
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while len(received) < 2 * len(elements):
                received.append(wire.decode(await framing.read_frame(reader)))
            done.set()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        channel = network.RemoteChannelWriter(w)
        await channel.send_all(elements[:3])
        await channel.send(elements[3])
        await channel.send_all(elements[4:])
        await channel.send_all(elements)
        await asyncio.wait_for(done.wait(), 10)
        channel.close()
        server.close()
        await server.wait_closed()
        return received

    assert asyncio.run(scenario()) == elements + elements
