"""KafkaSink against Tansu (a Kafka-protocol broker process): transactions, markers, fencing.

Tansu's ``read_committed`` does not hide aborted records, so no test here
can show isolation of an aborted transaction.  The exactly-once sink does not
need it for what these tests check: it produces a checkpoint's records only
inside the transaction that commits them (records are in the checkpoint until
then), so before a commit nothing is at the broker at all, and a restore
produces a committable again only when its commit marker (a transactional
offset, committed atomically with the records) is missing.
"""

from __future__ import annotations

import json
import time
from typing import Any

import confluent_kafka as ck
import pytest

from streamjob_runtime.connectors import kafka
from streamjob_runtime.operators import base, sink
from tests.kafka import Tansu, tansu

__all__ = ["tansu"]

pytestmark = pytest.mark.timeout(90)


class NoOutput:
    def emit(self, values: base.Batch, timestamps: base.Timestamps) -> None:
        raise AssertionError("a sink emits nothing")

    def emit_watermark(self, watermark: int) -> None:
        pass


def operator(
    spec: kafka.KafkaSink,
    restored: base.RestoredState | None = None,
    subtask: int = 0,
    parallelism: int = 1,
    attempt: int = 1,
) -> sink.SinkOperator:
    op = sink.SinkOperator(spec)
    op.setup(base.OperatorContext("out", subtask, parallelism, 128, attempt, "job"), NoOutput())
    op.initialize_state(restored)
    return op


def restored(*formers: base.OperatorSnapshot, checkpoint_id: int) -> base.RestoredState:
    return base.RestoredState(checkpoint_id, "job", {}, [f.operator for f in formers], len(formers))


def read_all(t: Tansu, topic: str, expect: int, settle_s: float = 1.0) -> list[Any]:
    """Every record of ``topic`` (read_committed), waiting for ``expect`` and then ``settle_s``."""
    consumer = ck.Consumer(
        {
            "bootstrap.servers": t.bootstrap_servers,
            "group.id": f"reader-{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    quiet_until: float | None = None
    while time.monotonic() < deadline:
        for m in consumer.consume(500, 0.1):
            if m.error() is None:
                got.append(json.loads(m.value() or b"null"))
        if len(got) >= expect:
            quiet_until = quiet_until or time.monotonic() + settle_s
            if time.monotonic() >= quiet_until:
                break
    consumer.close()
    return got


def eos(t: Tansu, **options: Any) -> kafka.KafkaSink:
    return kafka.KafkaSink(
        t.bootstrap_servers,
        "out",
        delivery_guarantee="exactly-once",
        key_selector=lambda v: v % 3,
        flush_timeout_s=5,
        **options,
    )


def test_exactly_once_records_appear_only_when_their_checkpoint_completes(tansu: Tansu) -> None:
    tansu.create_topic("out", 3)
    op = operator(eos(tansu))
    op.process_batch(list(range(10)), None)
    first = op.snapshot_state(1)
    op.process_batch(list(range(10, 15)), None)
    op.snapshot_state(2)
    assert read_all(tansu, "out", 0, settle_s=0.5) == []  # pre-committed only
    op.notify_checkpoint_complete(1)
    assert sorted(read_all(tansu, "out", 10)) == list(range(10))
    op.notify_checkpoint_complete(2)
    assert sorted(read_all(tansu, "out", 15)) == list(range(15))
    op.close()
    # A restore from checkpoint 1 finds its marker: nothing is produced twice.
    again = operator(eos(tansu), restored(first, checkpoint_id=1), attempt=2)
    again.close()
    assert sorted(read_all(tansu, "out", 15)) == list(range(15))


def test_restore_commits_the_restored_checkpoint_of_every_former_subtask_once(
    tansu: Tansu,
) -> None:
    tansu.create_topic("out", 3)
    spec = eos(tansu)
    ops = [operator(spec, subtask=i, parallelism=2) for i in range(2)]
    ops[0].process_batch([0, 1, 2], None)
    ops[1].process_batch([3, 4], None)
    snaps = [op.snapshot_state(5) for op in ops]
    ops[0].notify_checkpoint_complete(5)  # subtask 1 dies before its commit
    for op in ops:
        op.close()
    assert sorted(read_all(tansu, "out", 3)) == [0, 1, 2]
    # Rescaled to one subtask: it commits subtask 1's transaction, and not subtask 0's again.
    one = operator(spec, restored(*snaps, checkpoint_id=5), attempt=2)
    one.process_batch([5], None)
    one.snapshot_state(6)
    one.notify_checkpoint_complete(6)
    one.close()
    assert sorted(read_all(tansu, "out", 6)) == [0, 1, 2, 3, 4, 5]


def test_a_new_attempt_fences_the_producer_of_the_old_one(tansu: Tansu) -> None:
    tansu.create_topic("out", 3)
    zombie = operator(eos(tansu), attempt=1)
    zombie.process_batch([1, 2], None)
    zombie.snapshot_state(1)
    current = operator(eos(tansu), attempt=2)  # same transactional id: init_transactions
    with pytest.raises(ck.KafkaException):
        zombie.notify_checkpoint_complete(1)
    current.process_batch([7], None)
    current.snapshot_state(2)
    current.notify_checkpoint_complete(2)
    current.close()
    consumer = ck.Consumer(eos(tansu).marker_consumer_config("streamjob-job-out-0"))
    [marker] = consumer.committed([ck.TopicPartition("out", 0)], timeout=30)
    consumer.close()
    assert marker.offset == 2  # only the current attempt's transaction committed


def test_at_least_once_flushes_at_the_barrier(tansu: Tansu) -> None:
    tansu.create_topic("out", 2)
    op = operator(kafka.KafkaSink(tansu.bootstrap_servers, "out", flush_timeout_s=10))
    op.process_batch(list(range(20)), None)
    assert op.snapshot_state(1).operator == []  # nothing to commit: the flush was the point
    assert sorted(read_all(tansu, "out", 20)) == list(range(20))
    op.close()


def test_delivery_guarantee_none_delivers_without_waiting_at_the_barrier(tansu: Tansu) -> None:
    tansu.create_topic("out", 2)
    spec = kafka.KafkaSink(tansu.bootstrap_servers, "out", delivery_guarantee="none")
    assert "enable.idempotence" not in spec.producer_config()
    op = operator(spec)
    op.process_batch(list(range(20)), None)
    op.snapshot_state(1)
    op.close()  # flushes what librdkafka still holds
    assert sorted(read_all(tansu, "out", 20)) == list(range(20))


def test_bad_sink_options_fail_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="commit_marker_topic"):
        kafka.KafkaSink("x:9092", lambda v: "t", delivery_guarantee="exactly-once")
    with pytest.raises(ValueError, match="is not one of"):
        kafka.KafkaSink("x:9092", "t", delivery_guarantee="twice")  # type: ignore[arg-type]


def test_a_rescaled_restore_fences_a_former_subtask_that_had_no_records(tansu: Tansu) -> None:
    tansu.create_topic("out", 3)
    spec = eos(tansu)
    ops = [operator(spec, subtask=i, parallelism=2) for i in range(2)]
    ops[0].process_batch([1, 2], None)  # subtask 1 gets nothing before the checkpoint
    snaps = [op.snapshot_state(1) for op in ops]
    assert [len(s.operator) for s in snaps] == [1, 1]  # an empty committable names it too
    for op in ops:
        op.notify_checkpoint_complete(1)
    # Subtask 1's producer, still alive (a zombie), opens a transaction after the checkpoint.
    zombie = spec.transactional_producer("streamjob-job-out-1")
    zombie.begin_transaction()
    zombie.produce("out", b"99")
    zombie.flush(5)
    one = operator(spec, restored(*snaps, checkpoint_id=1), attempt=2)
    with pytest.raises(ck.KafkaException):
        zombie.commit_transaction(5)  # fenced by the restore at parallelism 1
    for op in [*ops, one]:
        op.close()
