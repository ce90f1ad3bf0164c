"""Test job: keyed state much larger than the TaskManager's memory, checked byte for byte.

Event ``i`` is key ``i % keys`` in round ``i // keys``.  In round 0 a key
stores ``size`` pseudo-random (incompressible) bytes derived from the key; in
every later round it reads them back, compares them with the bytes derived
again, and counts a match.  In the last round it emits ``key matches``: the
exactly-once output is ``k rounds-1`` for every key, and lost or corrupted
state shows as a smaller count.

Arguments (env.args, as key=value): out, keys, rounds, size, interval, and
any ``state.backend.*`` option as ``D.<option>=<value>``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from streamjob_runtime import config, functions
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment


def blob(key: int, size: int) -> bytes:
    return random.Random(key).randbytes(size)


class CheckBlobs(functions.KeyedProcessFunction):
    def __init__(self, keys: int, rounds: int, size: int) -> None:
        self.keys, self.rounds, self.size = keys, rounds, size

    def open(self, ctx: functions.KeyedContext) -> None:
        self.blob = ctx.value_state("blob")
        self.matches = ctx.value_state("matches", 0)

    def process_element(self, value: Any, ctx: functions.KeyedContext) -> Iterable[Any] | None:
        key, round_ = value
        if round_ == 0:
            self.blob.update(blob(key, self.size))
            return None
        if self.blob.value() == blob(key, self.size):
            self.matches.update((self.matches.value() or 0) + 1)
        if round_ == self.rounds - 1:
            return [f"{key} {self.matches.value()}"]
        return None


def build(env: StreamExecutionEnvironment) -> None:
    a = dict(arg.split("=", 1) for arg in env.args)
    keys, rounds, size = int(a["keys"]), int(a.get("rounds", "2")), int(a.get("size", "4096"))
    env.enable_checkpointing(int(a.get("interval", "500")))
    options = {k.removeprefix("D."): v for k, v in a.items() if k.startswith("D.")}
    env.config = config.apply_options(env.config, options)
    (
        env.from_source(
            GeneratorSource(lambda i: (i % keys, i // keys), count=keys * rounds), name="events"
        )
        .uid("events")
        .key_by(lambda e: e[0])
        .process(CheckBlobs(keys, rounds, size))
        .uid("check")
        .sink_to(FileSink(a["out"], encoder=str))
        .uid("sink")
    )
