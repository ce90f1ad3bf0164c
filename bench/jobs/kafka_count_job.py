"""Benchmark job: key_by -> rolling count, from Kafka or the generator, to Kafka or files.

Event ``i`` is ``[i % keys, i]``.  The rolling reduce emits ``[key, count]``
per event.  Arguments (key=value): source (``kafka`` | ``generator``), sink
(``kafka`` | ``file``), guarantee (the Kafka sink's delivery guarantee),
bootstrap, stop (records per partition of topic ``in``, 4 partitions),
events and keys (generator), out (file sink directory), interval (ms).
"""

from __future__ import annotations

from typing import Any

from streamjob_runtime.connectors import kafka
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.operators import sink, source


def build(env: StreamExecutionEnvironment) -> None:
    a = dict(x.split("=", 1) for x in env.args)
    env.enable_checkpointing(int(a.get("interval", "1000")), "exactly-once")
    keys = int(a.get("keys", "1000"))
    src: source.Source
    if a["source"] == "kafka":
        stop = int(a["stop"])
        src = kafka.KafkaSource(
            a["bootstrap"],
            "in",
            value_format="json",
            stopping_offsets={("in", p): stop for p in range(4)},
        )
    else:
        src = GeneratorSource(lambda i: [i % keys, i], count=int(a["events"]))
    out: sink.Sink
    if a["sink"] == "kafka":
        out = kafka.KafkaSink(
            a["bootstrap"],
            "out",
            delivery_guarantee=a.get("guarantee", "exactly-once"),  # type: ignore[arg-type]
            key_selector=lambda r: r[0],
        )
    else:
        out = FileSink(a["out"], encoder=lambda r: f"{r[0]} {r[1]}")

    def count(x: Any, y: Any) -> list[int]:
        return [x[0], x[1] + y[1]]

    (
        env.from_source(src, name="in")
        .uid("in")
        .map(lambda e: [e[0], 1])
        .uid("ones")
        .key_by(lambda e: e[0])
        .reduce(count)
        .uid("count")
        .sink_to(out)
        .uid("out")
    )
