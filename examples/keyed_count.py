"""Keyed count: a running count per key, whose exactly-once output can be checked at any time.

Event ``i`` has key ``i % keys``. The generator has a fixed number of splits (8) that
divides ``keys``, so every key's events come from one split, in order: the ``n``-th event
of key ``k`` is ``i = k + (n - 1) * keys``. A rolling reduce keeps ``(count, last event)``
per key and the exactly-once file sink writes one line ``"<key> <count> <event>"`` per
event. The committed output is exact when, for every key, the counts are ``1..n`` once
each and each line's event is the one its count implies: a lost event breaks that
relation, a replayed one repeats a line, state lost on a restore restarts a count at 1.
This holds for the output of a job still running, so the check works mid-stream (the
e2e suite checks it across upgrades, pod kills and failovers).

Arguments (``key=value``): ``out`` (the sink directory, required), ``events`` (0, the
default, runs unbounded), ``rate`` (events per second across all subtasks, default 100),
``keys`` (a multiple of 8, default 64). Checkpointing comes from the submission (the
StreamJob's ``checkpointing``, or ``-D execution.checkpointing.interval=1000``)::

    streamjob run -p 2 -D execution.checkpointing.interval=1000 \\
        examples/keyed_count.py out=/tmp/counts events=20000 rate=5000
    python examples/keyed_count.py --verify out=/tmp/counts events=20000

``--verify`` takes the job's arguments, prints a one-line JSON report and exits 0 when
the committed output is exact (1 otherwise, 2 for bad arguments).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from streamjob_runtime.connectors.files import FileSink, read_committed_lines
from streamjob_runtime.connectors.generator import GeneratorSource
from streamjob_runtime.datastream import StreamExecutionEnvironment

SPLITS = 8
DEFAULTS = {"events": "0", "rate": "100", "keys": "64"}
USAGE = "out=DIR [events=N (0: unbounded)] [rate=EVENTS_PER_SECOND] [keys=MULTIPLE_OF_8]"

Event = tuple[int, int, int]  # (key, count, event index)


@dataclasses.dataclass(frozen=True)
class Arguments:
    out: str
    events: int | None  # None: unbounded
    rate: float
    keys: int


def parse(args: Sequence[str]) -> Arguments:
    """The job's ``key=value`` arguments; ValueError says what to fix."""
    given: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in {"out", *DEFAULTS}:
            raise ValueError(f"keyed_count: unknown argument {arg!r}; usage: {USAGE}")
        given[key] = value
    if not given.get("out"):
        raise ValueError(f"keyed_count: out=DIR is required; usage: {USAGE}")
    values = {**DEFAULTS, **given}
    try:
        events, rate, keys = int(values["events"]), float(values["rate"]), int(values["keys"])
    except ValueError:
        raise ValueError(
            f"keyed_count: events, rate and keys must be numbers; usage: {USAGE}"
        ) from None
    if events < 0 or rate <= 0 or keys <= 0 or keys % SPLITS:
        raise ValueError(
            f"keyed_count: need events >= 0, rate > 0 and keys a positive multiple of {SPLITS}"
            f" (got events={events}, rate={rate:g}, keys={keys})"
        )
    return Arguments(values["out"], events or None, rate, keys)


def build(env: StreamExecutionEnvironment) -> None:
    a = parse(env.args)
    keys = a.keys
    (
        env.from_source(
            GeneratorSource(lambda i: (i % keys, 1, i), count=a.events, rate=a.rate, splits=SPLITS),
            name="events",
        )
        .uid("events")
        .key_by(lambda e: e[0])
        .reduce(lambda acc, e: (acc[0], acc[1] + 1, e[2]))
        .uid("count")
        .sink_to(FileSink(a.out, encoder=lambda e: f"{e[0]} {e[1]} {e[2]}"))
        .uid("sink")
    )


@dataclasses.dataclass(frozen=True)
class Report:
    lines: int
    keys: int
    problems: list[str]

    @property
    def exact(self) -> bool:
        return not self.problems


def verify(lines: Iterable[str], keys: int, events: int | None = None) -> Report:
    """Check committed output lines (see the module doc); ``events`` for a finished job."""
    seen: dict[int, set[int]] = {}
    problems: list[str] = []
    total = 0
    for line in lines:
        total += 1
        try:
            key, count, event = (int(field) for field in line.split())
        except ValueError:
            problems.append(f"malformed line {line!r}")
            continue
        counts = seen.setdefault(key, set())
        if count in counts:
            problems.append(f"key {key}: count {count} written twice (a replayed event)")
        counts.add(count)
        if event != key + (count - 1) * keys:
            problems.append(
                f"key {key}: count {count} comes from event {event}, expected"
                f" {key + (count - 1) * keys} (an event lost, or state lost on a restore)"
            )
    for key, counts in sorted(seen.items()):
        gaps = set(range(1, max(counts) + 1)) - counts
        if gaps:
            problems.append(f"key {key}: counts {sorted(gaps)[:5]} missing (lost output)")
    if events is not None:
        for key in range(min(keys, events)):
            want = len(range(key, events, keys))
            got = max(seen.get(key, {0}))
            if got != want:
                problems.append(f"key {key}: counted {got} events, expected {want}")
    return Report(total, len(seen), problems[:20])


def main(argv: Sequence[str]) -> int:
    if len(argv) < 1 or argv[0] != "--verify":
        print(f"usage: python keyed_count.py --verify {USAGE}", file=sys.stderr)
        return 2
    try:
        a = parse(argv[1:])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if not a.out.startswith("s3://") and not Path(a.out).is_dir():  # s3: a prefix, no dir
        print(f"keyed_count: {a.out} is not a directory: no output yet?", file=sys.stderr)
        return 1
    report = verify(read_committed_lines(a.out), a.keys, a.events)
    print(json.dumps({"exact": report.exact, **dataclasses.asdict(report)}))
    return 0 if report.exact else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
