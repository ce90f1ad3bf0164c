"""KafkaSource against librdkafka's mock cluster (offsets, restores, rescaling, bounded mode)
and against Tansu behind a proxy that cuts the connections (a broker outage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest

from streamjob_runtime.connectors import kafka
from streamjob_runtime.operators import source
from tests.kafka import MockCluster, Outage, mock_cluster, start_tansu

__all__ = ["mock_cluster"]

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 4  # the mock cluster's auto-created topics


def fill(cluster: MockCluster, topic: str, n: int, first: int = 0) -> None:
    cluster.produce(topic, [(i % PARTITIONS, b"%d" % i, 1_000 + i) for i in range(first, n)])


def readers(src: kafka.KafkaSource, splits: list[Any], parallelism: int) -> list[Any]:
    out = []
    for subtask in range(parallelism):
        reader = src.create_reader(subtask, parallelism)
        reader.add_splits([s for s in splits if s.index % parallelism == subtask])
        out.append(reader)
    return out


def drain(rs: list[Any], count: int, timeout: float = 30) -> list[Any]:
    """Poll the readers until ``count`` records (or all finished); every value read."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for r in rs:
            polled = r.poll(100)
            for part in polled or []:
                got.extend(part.values)
        time.sleep(0.01)
    return got


def test_restored_readers_resume_after_the_checkpointed_offsets_at_another_parallelism(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "in", 200)
    src = kafka.KafkaSource(mock_cluster.bootstrap_servers, "in", value_format="str")
    splits = src.create_splits(2)
    assert sorted((s.topic, s.partition) for s in splits) == [("in", p) for p in range(4)]
    first = readers(src, splits, 2)
    got = drain(first, 120)
    taken = [s for r in first for s in r.snapshot_state(1)]
    for r in first:
        r.close()
    fill(mock_cluster, "in", 300, first=200)
    # Rescaled to 3: the splits carry their offsets wherever they go.
    second = readers(src, taken, 3)
    got += drain(second, 300 - len(got))
    for r in second:
        r.close()
    assert sorted(got, key=int) == [str(i) for i in range(300)]


def test_starting_offsets_earliest_latest_explicit_and_committed(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "s", 40)
    boot = mock_cluster.bootstrap_servers

    def start(**options: Any) -> list[int]:
        src = kafka.KafkaSource(boot, "s", value_format="str", **options)
        [r] = readers(src, src.create_splits(1), 1)
        snap = r.snapshot()
        r.close()
        return [s.offset for s in sorted(snap, key=lambda s: s.index)]

    assert start() == [0, 0, 0, 0]
    assert start(starting_offsets="latest") == [10, 10, 10, 10]
    # Timestamps (offsets_for_times) are not tested: neither the mock cluster nor Tansu
    # answers ListOffsets by timestamp (both return -1 or 0 for any timestamp).
    assert start(starting_offsets={("s", 1): 7}) == [0, 7, 0, 0]
    consumer = ck.Consumer({"bootstrap.servers": boot, "group.id": "g1"})
    consumer.commit(offsets=[ck.TopicPartition("s", 2, 3)], asynchronous=False)
    consumer.close()
    assert start(starting_offsets="committed", group_id="g1") == [0, 0, 3, 0]


def test_completed_checkpoint_commits_its_offsets_to_the_group(mock_cluster: MockCluster) -> None:
    fill(mock_cluster, "c", 40)
    src = kafka.KafkaSource(mock_cluster.bootstrap_servers, "c", group_id="g2")
    [r] = readers(src, src.create_splits(1), 1)
    drain([r], 40)
    r.snapshot_state(7)
    r.notify_checkpoint_complete(7)
    r.close()
    consumer = ck.Consumer({"bootstrap.servers": mock_cluster.bootstrap_servers, "group.id": "g2"})
    deadline = time.monotonic() + 30
    while True:
        committed = consumer.committed([ck.TopicPartition("c", p) for p in range(4)], timeout=10)
        if [tp.offset for tp in committed] == [10] * 4 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    consumer.close()
    assert [tp.offset for tp in committed] == [10] * 4


def test_bounded_source_stops_at_the_latest_offsets_of_its_start(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "b", 40)
    src = kafka.KafkaSource(
        mock_cluster.bootstrap_servers,
        "b",
        value_format="str",
        key_format="str",
        as_record=True,
        stopping_offsets="latest",
    )
    [r] = readers(src, src.create_splits(1), 1)
    fill(mock_cluster, "b", 60, first=40)  # after the start: not read
    records: list[kafka.KafkaRecord] = []
    finished: set[int] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polled = r.poll(100)
        if polled is None:
            break
        for part in polled:
            records.extend(part.values)
            if part.finished:
                finished.add(part.split)
        time.sleep(0.01)
    r.close()
    assert polled is None
    assert finished == {0, 1, 2, 3}
    assert sorted(int(x.value) for x in records) == list(range(40))
    first = min(records, key=lambda x: int(x.value))
    assert (first.key, first.timestamp, first.partition, first.offset) == ("k0", 1_000, 0, 0)
    assert kafka.record_timestamp(first) == 1_000


def test_partitions_of_a_topic_created_later_are_discovered_at_the_interval(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "d1", 8)
    src = kafka.KafkaSource(
        mock_cluster.bootstrap_servers,
        ["d1", "d2"],
        value_format="str",
        partition_discovery_interval_s=0.2,
    )
    splits = src.create_splits(2)
    assert {s.topic for s in splits} == {"d1"}
    rs = readers(src, splits, 2)
    got = drain(rs, 8)
    fill(mock_cluster, "d2", 108, first=100)  # d2 appears with 4 partitions
    got += drain(rs, 8)
    owned = [sorted(s.index for s in r.snapshot()) for r in rs]
    for r in rs:
        r.close()
    assert sorted(got, key=int) == [str(i) for i in [*range(8), *range(100, 108)]]
    base = 1 << 16
    assert owned == [[0, 2, base, base + 2], [1, 3, base + 1, base + 3]]


def test_bad_options_fail_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="needs a group_id"):
        kafka.KafkaSource("x:9092", "t", starting_offsets="committed")
    with pytest.raises(ValueError, match="unknown format"):
        kafka.KafkaSource("x:9092", "t", value_format="yaml")  # type: ignore[arg-type]


def test_source_splits_records_per_partition(mock_cluster: MockCluster) -> None:
    fill(mock_cluster, "p", 20)
    src = kafka.KafkaSource(mock_cluster.bootstrap_servers, "p", value_format="str")
    [r] = readers(src, src.create_splits(1), 1)
    per_split: dict[int, list[str]] = {}
    deadline = time.monotonic() + 30
    while sum(map(len, per_split.values())) < 20 and time.monotonic() < deadline:
        for part in r.poll(100) or []:
            assert isinstance(part, source.SplitRecords)
            per_split.setdefault(part.split, []).extend(part.values)
        time.sleep(0.01)
    r.close()
    assert per_split == {p: [str(i) for i in range(p, 20, 4)] for p in range(4)}


def test_source_rides_out_a_broker_outage_and_reads_on_exactly(tmp_path: Path) -> None:
    proxy = Outage()
    broker = start_tansu(tmp_path, advertised_port=proxy.port)
    t = next(broker)
    proxy.target_port = t.listen_port
    try:
        t.create_topic("o", 2)

        def produce(first: int, n: int) -> None:
            producer = ck.Producer({"bootstrap.servers": t.bootstrap_servers})
            for i in range(first, n):
                producer.produce("o", b"%d" % i, partition=i % 2)
            assert producer.flush(30) == 0

        produce(0, 100)
        src = kafka.KafkaSource(
            t.bootstrap_servers, "o", value_format="str", partition_discovery_interval_s=0.2
        )
        [r] = readers(src, src.create_splits(1), 1)
        got = drain([r], 100)
        proxy.down()
        # Polls during the outage return nothing and raise nothing (librdkafka reconnects).
        outage_end = time.monotonic() + 2
        while time.monotonic() < outage_end:
            assert all(not part.values for part in r.poll(100) or [])
            time.sleep(0.02)
        proxy.restore()
        produce(100, 200)
        got += drain([r], 100)
        r.close()
        assert sorted(got, key=int) == [str(i) for i in range(200)]
    finally:
        proxy.close()
        broker.close()


def test_a_bounded_source_of_a_missing_topic_fails_instead_of_reading_nothing(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "here", 4)
    src = kafka.KafkaSource(
        mock_cluster.bootstrap_servers, ["here", "absent"], stopping_offsets="latest"
    )
    with pytest.raises(RuntimeError, match=r"\['absent'\] do not exist"):
        src.create_splits(1)


def test_a_restored_offset_out_of_range_reads_from_the_earliest_offset(
    mock_cluster: MockCluster,
) -> None:
    fill(mock_cluster, "r", 8)  # 2 per partition
    src = kafka.KafkaSource(mock_cluster.bootstrap_servers, "r", value_format="str")
    # As if the topic had been recreated after the checkpoint: offset 50 does not exist.
    restored = [kafka.KafkaPartitionSplit(0, "r", 0, 50)]
    restored += [kafka.KafkaPartitionSplit(p, "r", p, 2) for p in (1, 2, 3)]  # all read
    [r] = readers(src, restored, 1)
    got = drain([r], 2)
    r.close()
    assert got == ["0", "4"]
