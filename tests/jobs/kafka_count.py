"""Test job: Kafka -> key_by -> rolling count -> Kafka, exactly-once.

Reads JSON ``[key, i]`` records from topic ``in`` (4 partitions, bounded at
offset ``stop`` of each: Tansu's ListOffsets for "latest" lags), counts per
key and writes ``[key, count]`` to topic ``out`` with the exactly-once Kafka
sink (header ``txn`` on every record).  The exactly-once output for key
``k`` is ``[k, 1] .. [k, n_k]`` once each.

Arguments (key=value): bootstrap, stop, delay (seconds each record's map sleeps, to
keep the job running while a test kills a TaskManager), interval.
"""

from __future__ import annotations

import time
from typing import Any

from streamjob_runtime import config
from streamjob_runtime.connectors import kafka
from streamjob_runtime.datastream import StreamExecutionEnvironment


def build(env: StreamExecutionEnvironment) -> None:
    a = dict(x.split("=", 1) for x in env.args)
    delay = float(a.get("delay", "0"))
    env.enable_checkpointing(int(a.get("interval", "200")), "exactly-once")
    env.set_restart_strategy(config.fixed_delay(2_147_483_647, 100))

    def slow(event: Any) -> tuple[int, int]:
        if delay:
            time.sleep(delay)
        return (int(event[0]), 1)

    stop = int(a["stop"])
    source = kafka.KafkaSource(
        a["bootstrap"],
        "in",
        value_format="json",
        stopping_offsets={("in", p): stop for p in range(4)},
    )
    sink = kafka.KafkaSink(
        a["bootstrap"],
        "out",
        delivery_guarantee="exactly-once",
        key_selector=lambda r: r[0],
        transaction_header="txn",
        flush_timeout_s=20,
    )
    (
        env.from_source(source, name="in")
        .uid("in")
        .map(slow)
        .uid("slow")
        .key_by(lambda e: e[0])
        .reduce(lambda x, y: (x[0], x[1] + y[1]))
        .uid("count")
        .sink_to(sink)
        .uid("out")
    )
