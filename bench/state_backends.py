"""Checkpoint cost as keyed state grows: full snapshots vs incremental RocksDB checkpoints.

One operator subtask's keyed state (int key -> (count, sum)) grows to 1x, 10x
and 100x ``--keys``; then, at each size, ``--checkpoints`` rounds of a fixed
``--updates`` random updates followed by a checkpoint.  Per size it prints the
median duration (synchronous + asynchronous part) and bytes written of:

- ``hashmap``, full: the canonical snapshot pickled (what every hashmap checkpoint writes);
- ``rocksdb``, full: the canonical snapshot read from RocksDB and pickled (savepoints, and
  checkpoints with ``execution.checkpointing.incremental: false``);
- ``rocksdb``, incremental: RocksDB checkpoint (hard links) + upload of new SST files only.

It also prints keyed-state updates per CPU-second on each backend (the value-state
read-modify-write of a keyed count).  In-process, on real files: no cluster.

    uv run python bench/state_backends.py [--keys 10000] [--updates 10000] [--checkpoints 5]
"""

from __future__ import annotations

import argparse
import pickle
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from streamjob_runtime.graph import keygroups
from streamjob_runtime.state import heap, rocksdb, storage

MAXP = 128


def update(table: Any, rng: random.Random, keys: int, n: int) -> None:
    for _ in range(n):
        k = rng.randrange(keys)
        acc = table.get(k)
        table[k] = (1, k) if acc is None else (acc[0] + 1, acc[1] + k)


def run_size(keys: int, updates: int, checkpoints: int, workdir: Path) -> dict[str, Any]:
    rng = random.Random(keys)
    hm = heap.KeyedStateBackend()
    rocks = rocksdb.RocksDBKeyedStateBackend(
        workdir / "local", f"bench-{keys}", lambda k: keygroups.key_group(k, MAXP)
    )
    job_dir = workdir / f"job-{keys}"
    tables = [hm.table("acc"), rocks.table("acc")]
    for table in tables:  # the state: every key once
        for k in range(keys):
            table[k] = (1, k)
    results: dict[str, list[tuple[float, int]]] = {"hashmap full": [], "rocksdb full": []}
    results["rocksdb incremental"] = []
    rates: dict[str, list[float]] = {"hashmap": [], "rocksdb": []}
    for checkpoint_id in range(1, checkpoints + 1):
        for name, table in (("hashmap", tables[0]), ("rocksdb", tables[1])):
            started = time.process_time()
            update(table, random.Random(checkpoint_id), keys, updates)
            rates[name].append(updates / max(time.process_time() - started, 1e-9))
        for name, backend in (("hashmap full", hm), ("rocksdb full", rocks)):
            started = time.perf_counter()
            data = pickle.dumps((backend.snapshot(), []), protocol=5)
            size = storage.write_file(workdir / "full.state", data)
            results[name].append((time.perf_counter() - started, size))
        started = time.perf_counter()
        uploaded = rocks.upload(rocks.take_checkpoint(checkpoint_id), job_dir)
        inline = sum(len(v) for v in uploaded.inline.values())
        results["rocksdb incremental"].append(
            (time.perf_counter() - started, uploaded.uploaded_bytes + inline)
        )
        rocks.notify_checkpoint_complete(checkpoint_id)
    rocks.close()
    del rng
    summary: dict[str, Any] = {
        name: (
            statistics.median(d for d, _ in runs[1:] or runs),
            statistics.median(b for _, b in runs[1:] or runs),
        )
        for name, runs in results.items()
    }
    summary["rates"] = {name: statistics.median(r) for name, r in rates.items()}
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=10_000, help="state size at 1x (keys)")
    p.add_argument("--updates", type=int, default=10_000, help="updates between checkpoints")
    p.add_argument("--checkpoints", type=int, default=5, help="checkpoints per size")
    a = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streamjob-bench-state-"))
    print(
        f"checkpoint cost per state size: {a.updates:,} updates between checkpoints;"
        f" median of checkpoints 2..{a.checkpoints} (the first uploads everything)"
    )
    print("| state | hashmap full | rocksdb full | rocksdb incremental |")
    print("|---|---:|---:|---:|")
    rates: list[str] = []
    try:
        for factor in (1, 10, 100):
            keys = a.keys * factor
            s = run_size(keys, a.updates, a.checkpoints, workdir)
            cells = [f"{s[n][0] * 1000:,.0f} ms, {s[n][1] / 1e6:,.2f} MB" for n in list(s)[:3]]
            print(f"| {factor}x ({keys:,} keys) | " + " | ".join(cells) + " |", flush=True)
            rates.append(
                f"  {keys:,} keys: hashmap {s['rates']['hashmap']:,.0f},"
                f" rocksdb {s['rates']['rocksdb']:,.0f} updates/CPU-s"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("keyed value-state read-modify-write rate:")
    print("\n".join(rates))


if __name__ == "__main__":
    main()
