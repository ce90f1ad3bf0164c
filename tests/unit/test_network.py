"""Input gates: bounded channels and cancellation."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

from streamjob_runtime.graph import jobgraph, keygroups
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


class _Collect:
    """A channel writer that keeps what it is sent."""

    def __init__(self) -> None:
        self.elements: list[tuple[Any, ...]] = []

    async def send(self, element: tuple[Any, ...]) -> None:
        self.elements.append(element)

    async def send_all(self, elements: list[tuple[Any, ...]]) -> None:
        self.elements.extend(elements)

    def close(self) -> None:
        pass


def test_a_hash_partitioned_batch_goes_to_each_keys_subtask_in_order() -> None:
    # Every split path (2, 3-4 and more targets), with and without timestamps.
    max_parallelism = 128
    values = [(k % 50, i) for i, k in enumerate(range(0, 3000, 7))]
    timestamps = [1000 + i for i in range(len(values))]
    for n in range(1, 8):
        for ts in (None, timestamps):
            channels = [_Collect() for _ in range(n)]
            writer = network.RecordWriter(
                list(channels),
                jobgraph.Partitioning(jobgraph.PartitionKind.HASH, lambda v: v[0]),
                0,
                max_parallelism,
            )
            writer.emit(values, ts)
            asyncio.run(writer.flush())
            for target, channel in enumerate(channels):
                expected = [
                    i
                    for i, v in enumerate(values)
                    if keygroups.operator_index(
                        keygroups.key_group(v[0], max_parallelism), max_parallelism, n
                    )
                    == target
                ]
                got_values = [v for e in channel.elements for v in e[1]]
                assert got_values == [values[i] for i in expected], (n, target)
                if ts is None:
                    assert all(e[2] is None for e in channel.elements)
                else:
                    got_ts = [t for e in channel.elements for t in e[2]]
                    assert got_ts == [timestamps[i] for i in expected]


class _Peer:
    """The receiving end of a remote channel: decodes frame by frame into ``received``."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[network.Element] = asyncio.Queue()
        self.ended = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                self.received.put_nowait(wire.decode(await framing.read_frame(reader)))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            self.ended.set()

    async def frames(self, n: int) -> list[network.Element]:
        return [await asyncio.wait_for(self.received.get(), 10) for _ in range(n)]


async def _remote_pair(peer: _Peer) -> tuple[network.RemoteChannelWriter, asyncio.Server]:
    server = await asyncio.start_server(peer.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port)
    return network.RemoteChannelWriter(w), server


async def _close(channel: network.RemoteChannelWriter, server: asyncio.Server, peer: _Peer) -> None:
    channel.close()
    await channel.writer.wait_closed()
    await asyncio.wait_for(peer.ended.wait(), 10)
    server.close()
    await server.wait_closed()


def test_a_remote_writer_holds_frames_until_a_control_element_and_keeps_their_order() -> None:
    async def scenario() -> tuple[list[int], list[network.Element]]:
        peer = _Peer()
        channel, server = await _remote_pair(peer)
        held = []
        await channel.send_all([("b", [1, 2], None)])
        held.append(len(channel._held))
        await channel.send_all([("b", [3], None), ("b", [4], [40])])
        held.append(len(channel._held))
        await channel.send_all([("b", [5], [50]), ("c", 7, 1000, None), ("b", [6], None)])
        held.append(len(channel._held))  # the barrier wrote them all
        await channel.send(("e",))
        frames = await peer.frames(7)
        await _close(channel, server, peer)
        return held, frames

    held, frames = asyncio.run(scenario())
    assert held == [1, 3, 0]
    assert frames == [
        ("b", [1, 2], None),
        ("b", [3], None),
        ("b", [4], [40]),
        ("b", [5], [50]),
        ("c", 7, 1000, None),
        ("b", [6], None),
        ("e",),
    ]


class _Record:
    """A record that can be watched with a weak reference (ints and tuples cannot)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Record) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


def test_a_remote_writer_keeps_no_record_alive_while_it_holds_the_frame() -> None:
    """Batches are encoded when sent: their records are freed at once, while still in the
    CPU's caches, and not after up to FLUSH_RECORDS more records (see RemoteChannelWriter)."""

    async def scenario() -> tuple[bool, int, list[network.Element]]:
        peer = _Peer()
        channel, server = await _remote_pair(peer)
        record = _Record(1)
        ref = weakref.ref(record)
        await channel.send_all([("b", [record], None)])
        del record
        gc.collect()
        alive, held = ref() is not None, len(channel._held)
        frames = await peer.frames(1)  # the linger writes it
        await _close(channel, server, peer)
        return alive, held, frames

    alive, held, frames = asyncio.run(scenario())
    assert (alive, held) == (False, 1)
    assert frames == [("b", [_Record(1)], None)]


def test_a_remote_writer_sends_a_held_batch_after_the_linger_time() -> None:
    async def scenario() -> tuple[network.Element, float]:
        peer = _Peer()
        channel, server = await _remote_pair(peer)
        started = asyncio.get_running_loop().time()
        await channel.send_all([("b", [1], None)])  # held: fewer than FLUSH_RECORDS records
        [frame] = await peer.frames(1)
        waited = asyncio.get_running_loop().time() - started
        await _close(channel, server, peer)
        return frame, waited

    frame, waited = asyncio.run(scenario())
    assert frame == ("b", [1], None)
    assert waited >= network.LINGER_S * 0.9


def _waiting(channel: network.RemoteChannelWriter) -> tuple[bool, int]:
    """Whether the linger timer is set, and how many frames are held."""
    return channel._linger is not None, len(channel._held)


def test_a_remote_writer_writes_at_once_when_enough_records_are_held() -> None:
    half = network.FLUSH_RECORDS // 2

    async def scenario() -> list[network.Element]:
        peer = _Peer()
        channel, server = await _remote_pair(peer)
        await channel.send_all([("b", list(range(half)), None)])
        assert _waiting(channel) == (True, 1)  # held, for the linger timer
        await channel.send_all([("b", list(range(half, 2 * half)), None)])
        assert _waiting(channel) == (False, 0)  # written now, not by the timer
        frames = await peer.frames(2)
        await _close(channel, server, peer)
        return frames

    assert asyncio.run(scenario()) == [
        ("b", list(range(half)), None),
        ("b", list(range(half, 2 * half)), None),
    ]


def test_hash_fanout_is_the_channel_count_of_the_widest_hash_output() -> None:
    def writer(kind: jobgraph.PartitionKind, n: int) -> network.RecordWriter:
        selector = (lambda v: v) if kind is jobgraph.PartitionKind.HASH else None
        channels: list[network.ChannelWriter] = [_Collect() for _ in range(n)]
        return network.RecordWriter(channels, jobgraph.Partitioning(kind, selector), 0, 128)

    hash_, rebalance = jobgraph.PartitionKind.HASH, jobgraph.PartitionKind.REBALANCE
    assert network.MultiOutput([]).hash_fanout() == 1
    assert network.MultiOutput([writer(rebalance, 4)]).hash_fanout() == 1
    assert network.MultiOutput([writer(hash_, 3), writer(rebalance, 4)]).hash_fanout() == 3
    assert network.MultiOutput([writer(hash_, 2), writer(hash_, 5)]).hash_fanout() == 5


def test_a_remote_writer_blocks_a_slow_sender_whose_frames_only_the_linger_writes() -> None:
    """A source slower than FLUSH_RECORDS per linger never fills a write: the linger timer
    writes every frame. Against a receiver that has stopped reading, its sends must still
    block once the transport holds WRITE_BUFFER bytes, or the buffer grows without bound."""

    async def scenario() -> tuple[bool, int]:
        stalled = asyncio.Event()

        async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await stalled.wait()
            writer.close()

        server = await asyncio.start_server(never_read, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        channel = network.RemoteChannelWriter(w)
        batch = ("b", [b"x" * 1000] * 10, None)  # about 10 KB, far under FLUSH_RECORDS
        blocked = False
        for _ in range(2000):  # up to about 20 MB if nothing pushed back
            try:
                await asyncio.wait_for(channel.send_all([batch]), 2 * network.LINGER_S + 1)
            except TimeoutError:
                blocked = True
                break
            await asyncio.sleep(network.LINGER_S * 1.5)  # the linger writes the held batch
        buffered = w.transport.get_write_buffer_size()
        stalled.set()
        channel.close()
        server.close()
        return blocked, buffered

    blocked, buffered = asyncio.run(scenario())
    assert blocked, f"2000 sends went through; the transport buffers {buffered} bytes"
    assert buffered <= network.WRITE_BUFFER + 64 * 1024, buffered
