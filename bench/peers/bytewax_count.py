"""Bytewax twin of ``bench/jobs/keyed_count_job.py``, run by ``bench/peers.py`` in an
interpreter that has Bytewax (not a project dependency).

    python bench/peers/bytewax_count.py OUT EVENTS KEYS INTERVAL_MS BATCH [RECOVERY_DIR]

Event ``i`` is ``(i % keys, i // keys)``, made by a resumable source partition (its
snapshot is the next ``i``) in batches of ``BATCH``; ``key_on`` the key (Bytewax keys are
strings); ``fold_final`` keeps ``(count, sum)`` per key in keyed state and emits it once
the input ends (Bytewax's equivalent of a per-key end-of-time timer); Bytewax's own
``FileSink`` (resumable: truncates to its snapshot offset on resume) writes one line
``"key count sum"`` per key.  With RECOVERY_DIR, snapshots are taken every epoch of
INTERVAL_MS into a one-partition recovery database there.

Prints ``cpu-s C wall-s W`` at the end: this process's CPU time (all threads) and the wall
time of the dataflow's run alone, without the interpreter's start and Bytewax's import.
"""

from __future__ import annotations

import resource
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main


class _Range(StatefulSourcePartition[tuple[int, int], int]):
    def __init__(self, start: int, events: int, keys: int, batch: int) -> None:
        self.next, self.events, self.keys, self.batch = start, events, keys, batch

    def next_batch(self) -> list[tuple[int, int]]:
        if self.next >= self.events:
            raise StopIteration
        end = min(self.next + self.batch, self.events)
        keys = self.keys
        out = [(i % keys, i // keys) for i in range(self.next, end)]
        self.next = end
        return out

    def snapshot(self) -> int:
        return self.next


class Events(FixedPartitionedSource[tuple[int, int], int]):
    def __init__(self, events: int, keys: int, batch: int) -> None:
        self.events, self.keys, self.batch = events, keys, batch

    def list_parts(self) -> list[str]:
        return ["events"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Range:
        return _Range(resume_state or 0, self.events, self.keys, self.batch)


def _add(acc: tuple[int, int], event: tuple[int, int]) -> tuple[int, int]:
    return (acc[0] + 1, acc[1] + event[1])


def _row(item: tuple[str, tuple[int, int]]) -> tuple[str, str]:
    key, (count, total) = item
    return ("", f"{key} {count} {total}")


def build(out: Path, events: int, keys: int, batch: int) -> Dataflow:
    flow = Dataflow("keyed_count")
    stream: Any = op.input("events", flow, Events(events, keys, batch))
    keyed = op.key_on("key", stream, lambda e: str(e[0]))
    counts = op.fold_final("count-sum", keyed, lambda: (0, 0), _add)
    op.output("sink", op.map("row", counts, _row), FileSink(out))
    return flow


def main() -> None:
    out, events, keys, interval_ms, batch = sys.argv[1:6]
    recovery = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    Path(out).touch()
    config = None
    if recovery is not None:
        recovery.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery, 1)
        config = RecoveryConfig(recovery)
    flow = build(Path(out), int(events), int(keys), int(batch))
    started, cpu = time.monotonic(), _cpu_s()
    cli_main(
        flow,
        workers_per_process=1,
        epoch_interval=timedelta(milliseconds=int(interval_ms)),
        recovery_config=config,
    )
    print(f"cpu-s {_cpu_s() - cpu} wall-s {time.monotonic() - started}", flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
