"""Channel state of unaligned checkpoints: what a task records, and how a restore spreads it."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from streamjob_runtime import config, logs
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.graph import jobgraph, keygroups
from streamjob_runtime.rpc import messages
from streamjob_runtime.taskmanager import channelstate, network, task, wire
from tests.unit.test_barrier_alignment import running, until

CAPACITY = 2


def slow_str(value: object) -> str:
    time.sleep(0.002)
    return str(value)


class TwoChannelTask(NamedTuple):
    task: task.Task
    gate: network.InputGate
    reports: list[messages.Message]  # what the task sent its JobManager


def two_channel_task(
    tmp_path: Path, capacity: int = CAPACITY, slow: bool = False
) -> TwoChannelTask:
    """The map -> sink subtask of a job whose one source feeds it over two channels."""
    env = StreamExecutionEnvironment().set_parallelism(2)
    env.from_source(GeneratorSource(lambda i: i, 10)).set_parallelism(2).rebalance().map(
        slow_str if slow else str
    ).sink_to(FileSink(str(tmp_path / "out")))
    graph = env.job_graph()
    vertex = graph.vertices[1]

    reports: list[messages.Message] = []
    gate = network.InputGate(2, capacity)

    async def report(message: messages.Message) -> None:
        reports.append(message)

    t = task.Task(
        job_id="job",
        attempt=1,
        vertex=vertex,
        subtask=0,
        job_config=config.JobConfig(parallelism=2),
        gate=gate,
        writers=[],
        checkpoint_dir=str(tmp_path / "checkpoints"),
        restore=None,
        report=report,
        inputs=channelstate.input_edges(graph, vertex),
    )
    return TwoChannelTask(t, gate, reports)


def trigger(checkpoint_id: int, aligned_timeout_ms: int | None) -> messages.TriggerCheckpoint:
    return messages.TriggerCheckpoint(
        "job", 1, checkpoint_id, logs.now_ms(), aligned_timeout_ms=aligned_timeout_ms
    )


def acks(reports: list[messages.Message]) -> list[messages.AcknowledgeCheckpoint]:
    return [r for r in reports if isinstance(r, messages.AcknowledgeCheckpoint)]


def stored(tmp_path: Path, ack: messages.AcknowledgeCheckpoint) -> dict[int, list[object]]:
    """The stored channel state of ``ack``, as upstream subtask -> elements."""
    (handle,) = [h for h in ack.handles if h.has_channel_state]
    data = (tmp_path / "checkpoints" / f"chk-{ack.checkpoint_id}" / handle.file).read_bytes()
    return {
        upstream_subtask: [pickle.loads(e) for e in elements]
        for _, upstream_subtask, _, elements in channelstate.decode(data)
    }


def test_an_unaligned_checkpoint_stores_what_each_channel_held_before_its_barrier(
    tmp_path: Path,
) -> None:
    t, gate, reports = two_channel_task(tmp_path)
    gate.blocked.add(0)  # hold channel 0's data in its queue, as a busy task would
    gate.blocked.add(1)

    async def scenario() -> None:
        await gate.channels[0].put(("b", ["a"], None))
        await gate.channels[1].put(("b", ["x"], None))
        t.trigger_checkpoint(trigger(1, 0))
        await until(lambda: gate.channels[0].capture is not None, "the capture to start")
        # Beyond the capacity (2) while recording: the barriers are not stuck behind data.
        for i in range(5):
            await gate.channels[1].put(("b", [f"y{i}"], None))
        await gate.channels[1].put(("w", 7))
        await gate.channels[1].put(("e",))
        await gate.channels[1].put(("c", 1, 0, None, 0))
        await gate.channels[0].put(("c", 1, 0, None, 0))
        gate.blocked.clear()
        gate.available.set()
        await until(lambda: bool(acks(reports)), "the acknowledgement")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    assert ack.unaligned
    assert ack.channel_state_bytes > 0
    assert stored(tmp_path, ack) == {
        0: [("b", ["a"], None)],
        1: [("b", ["x"], None)] + [("b", [f"y{i}"], None) for i in range(5)] + [("w", 7)],
    }


def test_batches_from_another_taskmanager_are_processed_and_stored_decoded(
    tmp_path: Path,
) -> None:
    t, gate, reports = two_channel_task(tmp_path)
    gate.blocked.update({0, 1})

    def received(values: list[str]) -> tuple[object, ...]:
        return wire.receive(wire.encode(("b", values, None)))

    async def scenario() -> None:
        await gate.channels[0].put(received(["a", "b"]))  # queued when the capture starts
        t.trigger_checkpoint(trigger(1, 0))
        await until(lambda: gate.channels[0].capture is not None, "the capture to start")
        await gate.channels[0].put(received(["c"]))  # recorded as it arrives
        await gate.channels[0].put(("c", 1, 0, None, 0))
        await gate.channels[1].put(("c", 1, 0, None, 0))
        await gate.channels[1].put(received(["after"]))
        gate.blocked.clear()
        gate.available.set()
        await until(lambda: bool(acks(reports)), "the acknowledgement")
        await until(lambda: t.records_in == 4, "every record processed")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    assert stored(tmp_path, ack) == {0: [("b", ["a", "b"], None), ("b", ["c"], None)]}


def test_records_after_a_channels_barrier_are_not_channel_state_and_capacity_returns(
    tmp_path: Path,
) -> None:
    t, gate, reports = two_channel_task(tmp_path)

    async def scenario() -> None:
        gate.blocked.update({0, 1})
        t.trigger_checkpoint(trigger(1, 0))
        await until(lambda: gate.channels[1].capture is not None, "the capture to start")
        await gate.channels[0].put(("b", ["before"], None))
        await gate.channels[0].put(("c", 1, 0, None, 0))
        assert gate.channels[0].capture is None
        # The channel is at its capacity (2) again: a put waits for room.
        blocked = asyncio.create_task(gate.channels[0].put(("b", ["after"], None)))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        await gate.channels[1].put(("c", 1, 0, None, 0))
        gate.blocked.clear()
        gate.available.set()
        async with asyncio.timeout(5):
            await blocked
        await until(lambda: bool(acks(reports)), "the acknowledgement")
        await until(lambda: t.records_in == 2, "every record processed")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    assert stored(tmp_path, ack) == {0: [("b", ["before"], None)]}


def test_alignment_timeout_switches_to_unaligned_and_arrived_channels_store_nothing(
    tmp_path: Path,
) -> None:
    t, gate, reports = two_channel_task(tmp_path)

    async def scenario() -> None:
        # Aligned first: channel 0's barrier blocks it, its later data waits behind it.
        t.trigger_checkpoint(trigger(1, 200))
        await gate.channels[0].put(("c", 1, 0, None, 200))
        await gate.channels[0].put(("b", ["post-barrier"], None))
        await until(lambda: gate.blocked == {0}, "channel 0 aligned")
        gate.blocked.add(1)  # channel 1's data stays queued (a busy task)
        await gate.channels[1].put(("b", ["in-flight"], None))
        await until(lambda: gate.channels[1].capture is not None, "the switch to unaligned")
        assert 0 not in gate.blocked  # the switch ended the alignment
        await gate.channels[1].put(("c", 1, 0, None, 200))
        gate.blocked.clear()
        gate.available.set()
        await until(lambda: bool(acks(reports)), "the acknowledgement")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    assert ack.unaligned
    assert ack.alignment_ms >= 100
    assert stored(tmp_path, ack) == {1: [("b", ["in-flight"], None)]}


def test_a_busy_task_takes_the_trigger_while_its_queue_is_full(tmp_path: Path) -> None:
    # 30 batches of 5 slow records (2 ms each) are queued: the task must not hold the loop
    # until they are done, or the trigger (a control message) would find an empty queue.
    t, gate, reports = two_channel_task(tmp_path, capacity=64, slow=True)

    async def scenario() -> None:
        for i in range(30):
            await gate.channels[0].put(("b", [f"r{i}-{j}" for j in range(5)], None))
        await until(lambda: t.records_in > 0, "processing to start")
        t.trigger_checkpoint(trigger(1, 0))
        await until(lambda: gate.channels[0].capture is not None, "the capture to start")
        await gate.channels[0].put(("c", 1, 0, None, 0))
        await gate.channels[1].put(("c", 1, 0, None, 0))
        await until(lambda: bool(acks(reports)), "the acknowledgement")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    in_flight = stored(tmp_path, ack)[0]
    assert len(in_flight) >= 20, f"only {len(in_flight)} of 30 batches were still queued"


def test_an_aborted_unaligned_checkpoint_stops_recording_and_declines(tmp_path: Path) -> None:
    t, gate, reports = two_channel_task(tmp_path)

    async def scenario() -> None:
        t.trigger_checkpoint(trigger(1, 0))
        await until(lambda: gate.channels[1].capture is not None, "the capture to start")
        t.abort_checkpoint(1)
        assert all(ch.capture is None for ch in gate.channels)
        await until(
            lambda: any(isinstance(r, messages.DeclineCheckpoint) for r in reports), "decline"
        )

    asyncio.run(running(t, scenario))
    assert not acks(reports)


def test_aligned_checkpoints_of_a_task_record_no_channel_state(tmp_path: Path) -> None:
    t, gate, reports = two_channel_task(tmp_path)

    async def scenario() -> None:
        await gate.channels[0].put(("b", ["a"], None))
        await gate.channels[0].put(("c", 1, 0, None, None))
        await gate.channels[1].put(("c", 1, 0, None, None))
        await until(lambda: bool(acks(reports)), "the acknowledgement")

    asyncio.run(running(t, scenario))
    (ack,) = acks(reports)
    assert not ack.unaligned
    assert not any(h.has_channel_state for h in ack.handles)


# -- redistribution on restore ---------------------------------------------------------


def key(v: object) -> object:
    assert isinstance(v, tuple)
    return v[0]


HASH = jobgraph.Partitioning(jobgraph.PartitionKind.HASH, key)
REBALANCE = jobgraph.Partitioning(jobgraph.PartitionKind.REBALANCE)


def encoded(*elements: tuple[object, ...]) -> list[bytes]:
    return [channelstate.encode_element(e) for e in elements]


def test_unchanged_parallelism_returns_every_channel_to_itself_with_its_watermarks() -> None:
    edges = [channelstate.InputEdge("src", 2, 0, HASH)]
    stored = [
        (0, [("src", 1, 2, encoded(("b", [(1, 1)], None), ("w", 5)))]),
        (1, [("src", 0, 2, encoded(("b", [(2, 2)], None)))]),
    ]
    got = channelstate.redistribute(stored, edges, 0, 2, 2, 128)
    assert got == {1: [("b", [(1, 1)], None), ("w", 5)]}


def test_keyed_in_flight_data_goes_to_the_subtask_owning_each_key_group() -> None:
    maxp, old_p, new_p = 128, 2, 3
    records = [(k, k) for k in range(60)]
    timestamps = list(range(60))
    stored = [
        (s, [("src", u, 2, encoded(("b", records, timestamps), ("w", 9)))])
        for s in range(old_p)
        for u in range(2)
    ]
    seen: list[tuple[int, int]] = []
    for new in range(new_p):
        edges = [channelstate.InputEdge("src", 2, 0, HASH)]
        got = channelstate.redistribute(stored, edges, new, new_p, old_p, maxp)
        mine = keygroups.KeyGroupRange.for_subtask(new, maxp, new_p)
        for channel, elements in got.items():
            assert channel in (0, 1)
            for kind, values, ts in elements:  # watermarks dropped on rescale
                assert kind == "b"
                assert all(mine.contains(keygroups.key_group(v[0], maxp)) for v in values)
                assert ts == [v[1] for v in values]
                seen.extend(values)
    # Every stored record lands on exactly one new subtask.
    assert sorted(seen) == sorted(records * (old_p * 2))


def test_non_keyed_in_flight_data_goes_to_former_subtask_mod_parallelism() -> None:
    stored = [
        (s, [("src", u, 3, encoded(("b", [f"s{s}u{u}"], None))) for u in range(3)])
        for s in range(3)
    ]
    edges = [channelstate.InputEdge("src", 2, 0, REBALANCE)]
    got0 = channelstate.redistribute(stored, edges, 0, 2, 3, 128)
    got1 = channelstate.redistribute(stored, edges, 1, 2, 3, 128)
    # Former subtasks 0 and 2 -> new 0; 1 -> new 1; upstream u -> channel u mod 2.
    assert got0 == {
        0: [
            ("b", ["s0u0"], None),
            ("b", ["s0u2"], None),
            ("b", ["s2u0"], None),
            ("b", ["s2u2"], None),
        ],
        1: [("b", ["s0u1"], None), ("b", ["s2u1"], None)],
    }
    assert got1 == {0: [("b", ["s1u0"], None), ("b", ["s1u2"], None)], 1: [("b", ["s1u1"], None)]}


def test_in_flight_data_of_an_upstream_the_job_lost_is_refused_with_a_reason() -> None:
    stored = [(0, [("gone", 0, 1, encoded(("b", [1], None)))])]
    edges = [channelstate.InputEdge("src", 1, 0, REBALANCE)]
    with pytest.raises(channelstate.ChannelStateError, match="savepoint"):
        channelstate.redistribute(stored, edges, 0, 1, 1, 128)
