"""Test job: rolling word counts over text files (file source -> exactly-once file sink).

Arguments: out=DIR, then in=FILE (repeatable).  The map stalls 1 ms every 50 lines so a
test can kill a TaskManager midway.
"""

from __future__ import annotations

import time
from collections import Counter

from streamjob_runtime import config
from streamjob_runtime.connectors.files import FileSink, FileSource
from streamjob_runtime.datastream import StreamExecutionEnvironment


def expected(lines: list[str]) -> Counter[tuple[str, int]]:
    seen: Counter[str] = Counter()
    out: Counter[tuple[str, int]] = Counter()
    for line in lines:
        for word in line.split():
            seen[word] += 1
            out[(word, seen[word])] += 1
    return out


def build(env: StreamExecutionEnvironment) -> None:
    pairs = [a.split("=", 1) for a in env.args]
    out = next(v for k, v in pairs if k == "out")
    inputs = [v for k, v in pairs if k == "in"]
    env.enable_checkpointing(200)
    env.set_restart_strategy(config.fixed_delay(10, 100))
    lines = [0]

    def pace(line: str) -> str:
        lines[0] += 1
        if lines[0] % 50 == 0:
            time.sleep(0.001)
        return line

    (
        env.from_source(FileSource(inputs), name="lines")
        .uid("lines")
        .map(pace)
        .flat_map(lambda line: [(w, 1) for w in line.split()])
        .key_by(lambda pair: pair[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
        .uid("counts")
        .sink_to(FileSink(out, encoder=lambda r: f"{r[0]} {r[1]}"))
        .uid("sink")
    )
