"""Test job: a keyed (count, sum) in ValueState with one end-of-time timer per key.

Event ``i`` is ``(i % keys, i // keys)``.  Each key keeps ``(count, sum)`` and
registers an event-time timer at the end of time on its first event; the
bounded input ends with the MAX watermark, so each timer fires once and emits
``"key count sum"``.  Exactly-once output: key ``k`` has one row, with ``count``
its number of events and ``sum = 0 + 1 + ... + (count - 1)``.  Once every key
has been seen the timer table stops changing, so incremental ``hashmap``
checkpoints reference it in ``shared/`` instead of writing it again.

Arguments (env.args, as key=value): out, events (20000), keys (200), rate
(records/s), interval (checkpoint interval in ms, 100), retained (1),
incremental (execution.checkpointing.incremental), backend (state.backend.type),
localdir (state.backend.rocksdb.localdir).
"""

from __future__ import annotations

from typing import Any

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment
from streamjob_runtime.functions import KeyedContext, KeyedProcessFunction

END_OF_TIME = 2**62


def expected(events: int, keys: int) -> dict[int, tuple[int, int]]:
    """Key -> (count, sum) in the exactly-once output."""
    per_key, extra = divmod(events, keys)
    out = {}
    for k in range(keys):
        count = per_key + (1 if k < extra else 0)
        if count:
            out[k] = (count, count * (count - 1) // 2)
    return out


class CountSum(KeyedProcessFunction):
    def open(self, ctx: KeyedContext) -> None:
        self.acc = ctx.value_state("count-sum")

    def process_element(self, value: Any, ctx: KeyedContext) -> None:
        acc = self.acc.value()
        if acc is None:
            acc = (1, value[1])
            ctx.timer_service.register_event_time_timer(END_OF_TIME)
        else:
            acc = (acc[0] + 1, acc[1] + value[1])
        self.acc.update(acc)

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> list[str]:
        count, total = self.acc.value()  # type: ignore[misc]
        return [f"{ctx.current_key} {count} {total}"]


def build(env: StreamExecutionEnvironment) -> None:
    a = dict(arg.split("=", 1) for arg in env.args)
    events = int(a.get("events", "20000"))
    keys = int(a.get("keys", "200"))
    rate = float(a["rate"]) if "rate" in a else None
    env.enable_checkpointing(
        int(a.get("interval", "100")), "exactly-once", retained=int(a.get("retained", "1"))
    )
    options = {
        "execution.checkpointing.incremental": a.get("incremental"),
        "state.backend.type": a.get("backend"),
        "state.backend.rocksdb.localdir": a.get("localdir"),
    }
    env.config = config.apply_options(env.config, {k: v for k, v in options.items() if v})
    env.set_restart_strategy(config.fixed_delay(2_147_483_647, 100))

    def event(i: int) -> tuple[int, int]:
        return (i % keys, i // keys)

    (
        env.from_source(GeneratorSource(event, count=events, rate=rate), name="events")
        .uid("events")
        .key_by(lambda e: e[0])
        .process(CountSum())
        .uid("count-sum")
        .sink_to(FileSink(a["out"], encoder=str))
        .uid("sink")
    )
