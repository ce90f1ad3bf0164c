"""Network stack: bounded input channels, input gates, record writers.

Stream elements are tuples:

* ``("b", values, timestamps)`` a batch of records (timestamps may be None)
* ``("w", watermark)``
* ``("c", checkpoint_id, timestamp, target, aligned_timeout_ms)`` a checkpoint barrier
  (``target``: the savepoint directory for state files, None for a checkpoint;
  ``aligned_timeout_ms``: None for an aligned checkpoint, see
  :class:`streamjob_runtime.rpc.messages.TriggerCheckpoint`)
* ``("e",)`` end of input of that channel (the channel stays open for barriers)
* ``("s", payload)`` a batch as it came over the network, not yet decoded (only in
  an input channel fed by another TaskManager: see :func:`wire.decode_batch`)

Back-pressure: each input channel holds at most ``capacity`` elements.  A
local writer awaits free space; a remote channel's reader stops reading its
socket when the channel is full, so TCP flow control stalls the sender, whose
``drain`` then blocks.  No queue on the path is unbounded, except that a channel
recording in-flight data for an unaligned checkpoint (:meth:`InputChannel.start_capture`)
takes everything up to that checkpoint's barrier: what its upstream sent before
the barrier, a bounded amount.
"""

from __future__ import annotations

import asyncio
import collections
import pickle
import time
from collections.abc import Callable
from typing import Any, Protocol

from streamjob_runtime.graph import jobgraph, keygroups
from streamjob_runtime.operators import base
from streamjob_runtime.rpc import framing
from streamjob_runtime.taskmanager import channelstate, wire

Element = tuple[Any, ...]

# Bytes a remote channel's transport buffers before ``drain`` blocks the sender: room
# for a few flushes' frames, small enough that a stalled receiver bounds the records in
# flight (tests/integration/test_backpressure.py).
WRITE_BUFFER = 256 * 1024
# A remote channel holds the frames of its batches and writes them together, in one TLS
# record and send, once FLUSH_RECORDS records are held, at a control element or after
# LINGER_S seconds (see RemoteChannelWriter). Each write costs a TLS record, a send and a
# wakeup whatever its size; at the keyed count's rate the linger writes first anyway, so
# latency is unchanged.
FLUSH_RECORDS = 8192
LINGER_S = 0.005


class InputChannel:
    def __init__(self, gate: InputGate, index: int, capacity: int) -> None:
        self.gate = gate
        self.index = index
        self.capacity = capacity
        self.queue: collections.deque[Element] = collections.deque()
        self._not_full = asyncio.Event()
        self._not_full.set()
        # Unaligned checkpoint ``capture_id`` is recording this channel's in-flight data.
        self.capture: list[bytes] | None = None
        self.capture_id = 0

    async def put(self, element: Element) -> None:
        if self.capture is None:
            while len(self.queue) >= self.capacity and self.capture is None:
                self._not_full.clear()
                started = time.monotonic()
                await self._not_full.wait()
                self.gate.backpressured_s += time.monotonic() - started
        if self.capture is not None:  # also when a capture began while we waited for room
            self._record(element)
        self.queue.append(element)
        self.gate.available.set()

    def start_capture(self, checkpoint_id: int) -> tuple[list[bytes], bool] | None:
        """Record the channel's in-flight data for unaligned checkpoint ``checkpoint_id``:
        the data elements queued now and every one put until that checkpoint's barrier.

        Returns (the recorded elements, whether the barrier was ``checkpoint_id``'s and
        not a later one's) at once when the barrier is already queued; otherwise None,
        and the gate's ``on_captured`` gets them when the barrier is put.  Meanwhile
        the channel takes elements beyond its capacity, so the barrier is not stuck
        behind the back-pressured data it follows.
        """
        captured: list[bytes] = []
        for element in self.queue:
            kind = element[0]
            if kind == "c" and element[1] >= checkpoint_id:
                return captured, element[1] == checkpoint_id
            if kind == "b" or kind == "w":
                captured.append(channelstate.encode_element(element))
            elif kind == "s":
                captured.append(wire.stored(element[1]))
        self.capture = captured
        self.capture_id = checkpoint_id
        self._not_full.set()  # a put waiting for room goes ahead (and is recorded)
        return None

    def stop_capture(self) -> None:
        """Forget a capture (its checkpoint was aborted); the capacity holds again."""
        self.capture = None

    def _record(self, element: Element) -> None:
        captured = self.capture
        assert captured is not None
        kind = element[0]
        if kind == "c":
            if element[1] >= self.capture_id:
                self.capture = None
                if self.gate.on_captured is not None:
                    self.gate.on_captured(
                        self.index, self.capture_id, captured, element[1] == self.capture_id
                    )
        elif kind == "s":
            captured.append(wire.stored(element[1]))
        elif kind != "e":
            captured.append(channelstate.encode_element(element))

    def pop(self) -> Element:
        element = self.queue.popleft()
        if len(self.queue) < self.capacity:
            self._not_full.set()
        return element


class InputGate:
    """All input channels of one subtask; reads round-robin from unblocked channels."""

    def __init__(self, num_channels: int, capacity: int) -> None:
        self.available = asyncio.Event()
        self.channels = [InputChannel(self, i, capacity) for i in range(num_channels)]
        self.blocked: set[int] = set()
        self.backpressured_s = 0.0
        self._next = 0
        self._interrupted = False
        # (channel, checkpoint id, recorded elements, whether it was that checkpoint's
        # barrier): a channel's capture ended (see InputChannel.start_capture).
        self.on_captured: Callable[[int, int, list[bytes], bool], None] | None = None

    def interrupt(self) -> None:
        """Make the current or next :meth:`next` return None at once (control work)."""
        self._interrupted = True
        self.available.set()

    async def next(self, timeout: float | None = None) -> tuple[int, Element] | None:  # noqa: ASYNC109
        """The next element of an unblocked channel; None after ``timeout`` seconds idle
        or after :meth:`interrupt`."""
        channels, n = self.channels, len(self.channels)
        while True:
            if self._interrupted:
                self._interrupted = False
                return None
            for k in range(n):
                i = (self._next + k) % n
                ch = channels[i]
                if ch.queue and i not in self.blocked:
                    self._next = i + 1
                    return i, ch.pop()
            self.available.clear()
            if timeout is None:
                await self.available.wait()
            else:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that races with the event (CPython gh-86296).
                try:
                    async with asyncio.timeout(timeout):
                        await self.available.wait()
                except TimeoutError:
                    return None


class ChannelWriter(Protocol):
    async def send(self, element: Element) -> None: ...

    async def send_all(self, elements: list[Element]) -> None:
        """``send`` each element in order (a remote channel writes them in one go)."""

    def close(self) -> None: ...


class LocalChannelWriter:
    """To a subtask in the same TaskManager: no serialisation."""

    def __init__(self, channel: InputChannel) -> None:
        self.channel = channel

    async def send(self, element: Element) -> None:
        await self.channel.put(element)

    async def send_all(self, elements: list[Element]) -> None:
        put = self.channel.put
        for element in elements:
            await put(element)

    def close(self) -> None:
        pass


class RemoteChannelWriter:
    """To a subtask in another TaskManager, over its own TCP connection.

    Each element is one frame (:mod:`wire` format).  Back-pressure is the
    transport's: ``drain`` blocks while more than :data:`WRITE_BUFFER` bytes
    wait to be sent, which happens when the receiver stops reading because its
    input channel is full.

    Each element is encoded when it is sent, and its frame is held: the held
    frames are written together once :data:`FLUSH_RECORDS` records are held, a
    control element (watermark, barrier, end of input) is sent, or
    :data:`LINGER_S` has passed (Flink's output buffer and buffer timeout).  A
    hash partition splits each upstream batch over the downstream subtasks, so
    a batch here holds ``batch size / parallelism`` records, and one write per
    batch would cost a send, a TLS record and a wakeup each.  Encoding at once
    and not at the write frees the batch's records while they are still in the
    CPU's caches: holding up to 8192 records for the write and encoding them
    there cost the keyed count at parallelism 2 6.7 % of its events per
    CPU-second (the allocator then reuses their memory cold).  The receiver
    likewise decodes and processes a batch at a time.  A record that cannot be
    encoded fails the job at once (:class:`base.UnrecoverableError`): it would
    after every restart.  Elements keep their order: a caller that would send a
    barrier by another path must :meth:`write_held` first.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._held: list[bytes] = []  # frames not yet written
        self._held_records = 0
        self._linger: asyncio.TimerHandle | None = None

    async def send(self, element: Element) -> None:
        await self.send_all([element])

    async def send_all(self, elements: list[Element]) -> None:
        if self.frame_all(elements):
            self.write_held()
        elif self._held and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, self.write_held)
        # Wait while the transport holds more than WRITE_BUFFER bytes, whoever wrote them:
        # a sender too slow to fill a write within the linger has every frame written by
        # the timer, and without this wait it would fill the buffer of a receiver that
        # stopped reading without bound (the wait returns at once when there is room).
        await self.writer.drain()

    def frame_all(self, elements: list[Element]) -> bool:
        """Encode and hold ``elements``; whether the held frames are due to be written."""
        held, frame, encode = self._held, framing.frame, wire.encode
        due = False
        for element in elements:
            try:
                payload = encode(element)
            except (pickle.PicklingError, TypeError, AttributeError) as e:
                # The same records fail the same way after any restart.
                raise base.UnrecoverableError(
                    f"a record cannot be sent to a subtask in another TaskManager:"
                    f" {type(e).__name__}: {e}. Records that cross TaskManagers are pickled:"
                    " make them plain data or instances of classes importable by module path"
                ) from e
            held.append(frame(payload))
            if element[0] == "b":
                self._held_records += len(element[1])
            else:
                due = True  # control elements are rare, and a barrier must not wait
        return due or self._held_records >= FLUSH_RECORDS

    def write_held(self) -> None:
        """Write every held frame now, in one go, without waiting for drain."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        held = self._held
        if not held or self.writer.transport.is_closing():
            return
        self._held = []
        self._held_records = 0
        self.writer.write(b"".join(held))

    def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.writer.close()


class RecordWriter:
    """Partitions one output edge's records over the downstream subtasks.

    Elements accumulate per target between :meth:`flush` calls; the task
    flushes after each input element, which is where it may block.
    """

    def __init__(
        self,
        channels: list[ChannelWriter],
        partitioning: jobgraph.Partitioning,
        subtask_index: int,
        max_parallelism: int,
    ) -> None:
        self.channels = channels
        self.kind = partitioning.kind
        self.key_selector = partitioning.key_selector
        # The key selector as itemgetter(i): the partitioner reads a tuple's key itself.
        self.key_index = keygroups.tuple_index(self.key_selector) if self.key_selector else -1
        self.max_parallelism = max_parallelism
        self.subtask_index = subtask_index
        self.pending: list[list[Element]] = [[] for _ in channels]
        self._rr = subtask_index
        self.records_out = 0

    def _target_single(self) -> int:
        if self.kind is jobgraph.PartitionKind.FORWARD:
            return self.subtask_index
        self._rr = (self._rr + 1) % len(self.channels)
        return self._rr

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        self.records_out += len(values)
        n = len(self.channels)
        if self.kind is not jobgraph.PartitionKind.HASH or n == 1:
            target = 0 if n == 1 else self._target_single()
            self.pending[target].append(("b", values, timestamps))
            return
        assert self.key_selector is not None
        buckets, ts_buckets = keygroups.split(
            values, timestamps, self.key_selector, self.max_parallelism, n, self.key_index
        )
        pending = self.pending
        for t, bucket in enumerate(buckets):
            if bucket:
                pending[t].append(("b", bucket, None if ts_buckets is None else ts_buckets[t]))

    def broadcast(self, element: Element) -> None:
        for p in self.pending:
            p.append(element)

    async def flush(self) -> None:
        for target, elements in enumerate(self.pending):
            if elements:
                self.pending[target] = []
                await self.channels[target].send_all(elements)

    def close(self) -> None:
        for c in self.channels:
            c.close()


class MultiOutput:
    """The chain's tail output: every record goes to every output edge."""

    def __init__(self, writers: list[RecordWriter]) -> None:
        self.writers = writers

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        for w in self.writers:
            w.emit(values, timestamps)

    def hash_fanout(self) -> int:
        """Over how many channels the widest hash-partitioned edge splits a batch (1: none)."""
        return max(
            (len(w.channels) for w in self.writers if w.kind is jobgraph.PartitionKind.HASH),
            default=1,
        )

    def emit_watermark(self, watermark: int) -> None:
        for w in self.writers:
            w.broadcast(("w", watermark))

    def broadcast(self, element: Element) -> None:
        for w in self.writers:
            w.broadcast(element)

    async def flush(self) -> None:
        for w in self.writers:
            await w.flush()

    @property
    def records_out(self) -> int:
        return sum(w.records_out for w in self.writers)


class ChainOutput:
    """Hands records straight to the next operator of the chain."""

    def __init__(self, next_operator: base.StreamOperator) -> None:
        self.next = next_operator

    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        self.next.process_batch(values, timestamps)

    def emit_watermark(self, watermark: int) -> None:
        self.next.process_watermark(watermark)
