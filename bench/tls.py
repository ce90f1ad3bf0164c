"""The cost of mutual TLS on the record path: shuffle throughput with and without it.

Runs the keyed count of ``bench/keyed_count.py`` (generator -> key_by -> keyed
process function -> file sink) at parallelism 2 on one-slot TaskManagers, so
about half the records cross a TCP connection between TaskManagers, on a local
cluster with TLS (the default: every internal connection is mutual TLS) and one
started with ``insecure=True`` (plain TCP).  Checkpoints are off, so the
difference is the network path.  Configurations alternate (``--repeat`` runs
each) and the table shows medians; goal: TLS under 10 % slower.

    uv run python bench/tls.py [--events 3000000] [--keys 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

import common
import keyed_count

GOAL = 0.10


async def main_async(a: argparse.Namespace) -> bool:
    print(
        f"shuffle at parallelism 2: {a.events:,} events over {a.keys:,} keys, checkpoints off,"
        f" {a.repeat} run(s) per configuration",
        flush=True,
    )
    results: dict[bool, list[keyed_count.Result]] = {True: [], False: []}
    for _ in range(a.repeat):
        for tls in (False, True):
            workdir = Path(tempfile.mkdtemp(prefix="streamjob-bench-tls-"))
            try:
                r = await keyed_count.run_one(
                    2, False, a.events, a.keys, 1000, workdir, {}, insecure=not tls
                )
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            results[tls].append(r)
            print(f"  TLS {'on ' if tls else 'off'}: {keyed_count.describe(r)}", flush=True)
    print()
    print("| internal connections | events/s | events per TaskManager CPU-s | exact |")
    print("|---|---:|---:|---|")
    medians = {}
    for tls in (False, True):
        runs = results[tls]
        rate = common.median([r.events_per_s for r in runs])
        per_cpu = common.median([r.events_per_cpu_s for r in runs])
        medians[tls] = (rate, per_cpu)
        exact = all(r.exact for r in runs)
        label = "mutual TLS" if tls else "plain TCP (--insecure)"
        print(f"| {label} | {rate:,.0f} | {per_cpu:,.0f} | {'yes' if exact else 'NO'} |")
    slower = 1 - medians[True][0] / medians[False][0]
    cpu = medians[False][1] / medians[True][1] - 1
    ok = slower < GOAL
    print(
        f"\nTLS: {slower:+.1%} throughput, {cpu:+.1%} TaskManager CPU per event"
        f" (goal: under {GOAL:.0%} slower): {'met' if ok else 'MISSED'}"
    )
    return ok and all(r.exact for rs in results.values() for r in rs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=3_000_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    raise SystemExit(0 if asyncio.run(main_async(p.parse_args())) else 1)


if __name__ == "__main__":
    main()
