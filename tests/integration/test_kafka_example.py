"""examples/kafka_clicks.py on real processes and Tansu: event time from Kafka timestamps."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import confluent_kafka as ck
import pytest

from tests.conftest import Harness
from tests.kafka import Tansu, tansu

__all__ = ["tansu"]

pytestmark = pytest.mark.timeout(120)

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "kafka_clicks.py")
START = 1_700_000_000_000  # ms, a window boundary
CLICKS = 3_000
USERS = 7


def test_clicks_per_user_window_from_kafka_timestamps_reach_the_output_topic(
    cluster_factory: Callable[..., Harness], tansu: Tansu, monkeypatch: pytest.MonkeyPatch
) -> None:
    tansu.create_topic("clicks", 2)
    tansu.create_topic("clicks-per-user", 2)
    producer = ck.Producer({"bootstrap.servers": tansu.bootstrap_servers})
    expected: Counter[tuple[str, int]] = Counter()
    for i in range(CLICKS):
        ts = START + i * 10  # 30 s of clicks: windows at START, +10 s, +20 s
        user = f"u{i % USERS}"
        producer.produce(
            "clicks", json.dumps({"user": user}).encode(), partition=i % 2, timestamp=ts
        )
        expected[(user, ts - ts % 10_000)] += 1
    for partition in (0, 1):  # event time moves past the last window in both partitions
        producer.produce(
            "clicks", b'{"user": "late"}', partition=partition, timestamp=START + 60_000
        )
    assert producer.flush(30) == 0
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", tansu.bootstrap_servers)
    h = cluster_factory(taskmanagers=1)
    job = h.submit(
        EXAMPLE,
        ["in=clicks", "out=clicks-per-user"],
        parallelism=1,
    )
    consumer = ck.Consumer(
        {
            "bootstrap.servers": tansu.bootstrap_servers,
            "group.id": "check",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([ck.TopicPartition("clicks-per-user", p, ck.OFFSET_BEGINNING) for p in (0, 1)])
    rows: Counter[tuple[str, int]] = Counter()
    deadline = time.monotonic() + 60
    while sum(rows.values()) < CLICKS and time.monotonic() < deadline:
        for m in consumer.consume(500, 0.2):
            if m.error() is None:
                row = json.loads(m.value() or b"null")
                assert m.key() == row["user"].encode()
                rows[(row["user"], row["window_start"])] += row["clicks"]
    consumer.close()
    h.cancel(job)
    assert rows == expected
