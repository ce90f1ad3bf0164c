"""Clicks per user per 10-second window, from Kafka to Kafka, exactly-once.

Reads JSON clicks (``{"user": ...}``; any other fields are ignored) from a topic,
takes event time from the Kafka record timestamps (a watermark per partition,
partitions idle for 30 s do not hold event time back), counts clicks per user
per tumbling 10-second window and writes ``{"user", "window_start", "clicks"}``
as JSON to another topic, keyed by user, in Kafka transactions committed with
each checkpoint (readers with ``isolation.level=read_committed`` see each row
once).

Connection settings come from the environment (in Kubernetes, from a Secret;
see examples/streamjob-kafka.yaml): ``KAFKA_BOOTSTRAP_SERVERS`` (default
``kafka:9092``), and for SASL ``KAFKA_SASL_MECHANISM``, ``KAFKA_USERNAME``,
``KAFKA_PASSWORD`` (``KAFKA_SECURITY_PROTOCOL`` defaults to ``SASL_SSL`` then).

Arguments (``key=value``): ``in`` (topic, default ``clicks``), ``out`` (topic,
default ``clicks-per-user``), ``group`` (consumer group for monitoring offsets,
default ``streamjob-kafka-clicks``), ``start`` (``earliest``, ``latest`` or
``committed``; default ``earliest``).  Checkpoints every 5 s unless the
submission sets an interval (the sink commits with each checkpoint)::

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 streamjob run -p 2 \\
        -D execution.checkpointing.interval=5000 examples/kafka_clicks.py in=clicks
"""

from __future__ import annotations

import json
import os
from typing import Any

from streamjob_runtime.connectors import kafka
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import AggregateFunction, TimeWindow
from streamjob_runtime.windows import TumblingEventTimeWindows, WatermarkStrategy

WINDOW_MS = 10_000
DEFAULTS = {
    "in": "clicks",
    "out": "clicks-per-user",
    "group": "streamjob-kafka-clicks",
    "start": "earliest",
}


def connection() -> tuple[str, dict[str, Any]]:
    """Bootstrap servers and librdkafka security properties from the environment."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    properties: dict[str, Any] = {}
    if os.environ.get("KAFKA_USERNAME"):
        properties = {
            "security.protocol": os.environ.get("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            "sasl.mechanism": os.environ.get("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            "sasl.username": os.environ["KAFKA_USERNAME"],
            "sasl.password": os.environ.get("KAFKA_PASSWORD", ""),
        }
    return servers, properties


class CountClicks(AggregateFunction[kafka.KafkaRecord, int, int]):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: kafka.KafkaRecord, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator


def window_row(user: str, window: TimeWindow, count: int) -> dict[str, Any]:
    return {"user": user, "window_start": window.start, "clicks": count}


def build(env: StreamExecutionEnvironment) -> None:
    args = {**DEFAULTS, **dict(a.split("=", 1) for a in env.args)}
    if args["start"] not in ("earliest", "latest", "committed"):
        raise ValueError(f"start={args['start']}: use earliest, latest or committed")
    if not env.config.checkpointing.enabled:
        # The exactly-once sink commits with checkpoints: without them nothing is written.
        env.enable_checkpointing(5_000)
    servers, properties = connection()
    source = kafka.KafkaSource(
        servers,
        args["in"],
        group_id=args["group"],
        starting_offsets=args["start"],  # type: ignore[arg-type]
        value_format="json",
        key_format="str",
        as_record=True,
        properties=properties,
    )
    sink = kafka.KafkaSink(
        servers,
        args["out"],
        delivery_guarantee="exactly-once",
        key_selector=lambda row: row["user"],
        value_format=lambda row: json.dumps(row).encode(),
        properties=properties,
    )
    strategy = (
        WatermarkStrategy.for_bounded_out_of_orderness(2_000)
        .with_timestamp_assigner(kafka.record_timestamp)
        .with_idleness(30_000)
    )
    (
        env.from_source(source, strategy, "clicks")
        .uid("clicks")
        .key_by(lambda record: str(record.value.get("user")))
        .window(TumblingEventTimeWindows.of(WINDOW_MS))
        .aggregate(CountClicks(), window_row)
        .uid("clicks-per-user-window")
        .sink_to(sink)
        .uid("kafka-sink")
    )
