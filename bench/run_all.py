"""Run every benchmark: throughput, TLS cost, recovery, unaligned checkpoints, savepoints,
failover, operator reconcile, chaos, Kafka.

    uv run python bench/run_all.py [--quick] [--repeat N] [--wait-idle CORES]

``--quick`` runs 2,000,000 events instead of 10,000,000, 2 kills per
recovery configuration instead of 3, and the operator benchmark with 100
StreamJobs only instead of 100 and 1,000, one chaos round instead of 3, and one
round of the unaligned checkpoint benchmark at one channel capacity instead of two at two.
On a shared machine, ``--repeat 3`` reports medians and ``--wait-idle 0.3``
starts each throughput run only once other processes use at most 0.3 cores.
``--peers-python PATH`` (a Python with bytewax and apache-flink installed, outside the
project) also runs ``bench/peers.py``: streamjob, Flink and Bytewax on the throughput
workload in this session.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, args: list[str]) -> bool:
    print(f"$ python bench/{script} {' '.join(args)}", flush=True)
    started = time.monotonic()
    code = subprocess.run([sys.executable, str(BENCH / script), *args], check=False).returncode
    print(f"({script}: {time.monotonic() - started:.0f} s, exit code {code})\n", flush=True)
    return code == 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer events and kills")
    p.add_argument("--repeat", type=int, default=1, help="keyed count runs per configuration")
    p.add_argument(
        "--wait-idle",
        default=None,
        metavar="CORES",
        help="keyed count: before each run, wait until the machine uses at most CORES",
    )
    p.add_argument(
        "--peers-python",
        default=None,
        metavar="PATH",
        help="also run bench/peers.py with Flink's jars and Bytewax from this Python",
    )
    a = p.parse_args()
    events = "2000000" if a.quick else "10000000"
    kills = "2" if a.quick else "3"
    idle = ["--wait-idle", a.wait_idle] if a.wait_idle else []
    ok = run("keyed_count.py", ["--events", events, "--repeat", str(a.repeat), *idle])
    if a.peers_python:
        peers = ["--bytewax-python", a.peers_python, "--pyflink-python", a.peers_python]
        ok = run("peers.py", ["--events", events, "--repeat", str(max(a.repeat, 3)), *peers]) and ok
    ok = run("tls.py", ["--events", events, "--repeat", str(max(a.repeat, 3))]) and ok
    ok = run("recovery.py", ["--kills", kills]) and ok
    quick_unaligned = ["--runs", "1", "--capacities", "64", "--seconds", "10"]
    ok = run("unaligned.py", quick_unaligned if a.quick else []) and ok
    ok = run("savepoints.py", ["--quick"] if a.quick else []) and ok
    ok = run("state_backends.py", ["--checkpoints", "3"] if a.quick else []) and ok
    ok = run("failover.py", ["--quick"] if a.quick else []) and ok
    ok = run("operator_reconcile.py", ["--quick"] if a.quick else []) and ok
    ok = run("chaos.py", ["--runs", "1" if a.quick else "3"]) and ok
    ok = run("kafka_count.py", ["--events", "100000" if a.quick else "400000"]) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
