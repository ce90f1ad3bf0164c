"""The chaos suite: a windowed (event time, late events) + keyed-state job under random
TaskManager SIGKILLs, JobManager leader SIGKILLs and SIGSTOPs (etcd HA, a standby
JobManager) and rescaling savepoint chains, and a Kafka -> keyed count -> Kafka job
(exactly-once sink, a Tansu broker) under TaskManager SIGKILLs and a rescale, each run
checked against an exact model of its output (``tests/chaos/suite.py`` holds the
scenarios and the models; ``tests/jobs/chaos_window.py`` and
``tests/jobs/kafka_count.py`` the jobs). Without Tansu (``scripts/tools.sh`` fetches
it) the kafka scenario is skipped, and the report says so.

Each round runs every scenario once with its own seed, derived from ``--seed`` (printed;
a random one by default): random parallelisms in 1-3, 1-3 TaskManager kills, the leader
killed and stopped for longer than its 3 s lease in a random order, a chain of three
parallelisms (two for kafka). Generator splits: ``--splits`` (default 4, so rescaled readers hold
several splits at different offsets; ``--splits 0``: the first parallelism).

    uv run python bench/chaos.py [--runs 3] [--seed S] [--events 30000] [--rate 3000]
        [--splits 4] [--kafka-rate 1000] [--run SCENARIO:SEED] [--workdir DIR]
        [--scenarios taskmanagers,jobmanagers,rescale,kafka]

About a minute per round on a 2-core machine. Exit status 1 when any run was not exact.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO))

from tests import kafka
from tests.chaos import suite
from tests.etcd import Etcd, start_etcd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of every scenario")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=3_000.0)
    parser.add_argument("--splits", type=int, default=4, help="0: the first parallelism")
    parser.add_argument("--kafka-rate", type=float, default=1_000.0, help="kafka input/s")
    parser.add_argument("--scenarios", default=",".join(suite.SCENARIOS))
    parser.add_argument(
        "--run",
        default=None,
        metavar="SCENARIO:SEED",
        help="run one scenario with the seed a report printed for it (e.g. rescale:1323436024)",
    )
    parser.add_argument("--workdir", default=None, type=common.directory)
    a = parser.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(2**31)
    scenarios = [s for s in a.scenarios.split(",") if s]
    config = suite.Config(
        events=a.events, rate=a.rate, splits=a.splits or None, kafka_rate=a.kafka_rate
    )
    if kafka.tansu_binary() is None:
        missing = "tansu is missing from .tools/bin (run scripts/tools.sh)"
        if a.run is not None and a.run.startswith("kafka:"):
            print(f"chaos: cannot run {a.run}: {missing}")
            return 1
        if "kafka" in scenarios:
            print(f"chaos: skipping the kafka scenario: {missing}")
            scenarios.remove("kafka")
    rounds = f"{a.runs} round(s) of {', '.join(scenarios)}" if a.run is None else f"run {a.run}"
    print(
        f"chaos: seed {seed}, {rounds};"
        f" {a.events} events at {a.rate:.0f}/s, splits {a.splits or 'first parallelism'}"
        f" (kafka: at {a.kafka_rate:.0f}/s, 4 partitions)",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="streamjob-chaos-", dir=a.workdir))
    etcd: Etcd | None = None

    def get_etcd() -> Etcd:
        nonlocal etcd
        if etcd is None:
            (root / "etcd").mkdir()
            etcd = start_etcd(root / "etcd" / "data")
        return etcd

    runs: list[suite.Run] = []
    started = time.monotonic()
    try:
        if a.run is not None:
            scenario, _, one = a.run.partition(":")
            plan = [(0, scenario, int(one))]
        else:
            plan = list(suite.seeds(seed, a.runs))
        for i, scenario, run_seed in plan:
            if a.run is None and scenario not in scenarios:
                continue
            try:
                run = suite.run_one(scenario, root / f"{i}-{scenario}", run_seed, config, get_etcd)
            except Exception as e:  # a run that could not finish counts, and says why
                run = suite.Run(scenario, run_seed, a.events, [])
                run.error = f"{type(e).__name__}: {str(e)[:400]}"
            runs.append(run)
            print(f"  {run.line()}", flush=True)
    finally:
        if etcd is not None:
            etcd.stop()
    failed = [r for r in runs if not r.exact]
    rows = sum(r.result.rows_checked for r in runs)
    print(
        f"chaos: seed {seed}: {len(runs)} runs in {time.monotonic() - started:.0f} s;"
        f" {sum(r.tm_kills for r in runs)} TaskManager SIGKILLs,"
        f" {sum(r.jm_kills for r in runs)} leader SIGKILLs,"
        f" {sum(r.jm_stops for r in runs)} leader SIGSTOPs,"
        f" {sum(r.rescales for r in runs)} savepoint restores,"
        f" {sum(r.restarts for r in runs)} job restarts;"
        f" {rows} rows checked: {sum(r.result.lost for r in runs)} lost,"
        f" {sum(r.result.duplicated for r in runs)} duplicated,"
        f" {sum(r.result.wrong for r in runs)} wrong"
        f" ({sum(r.result.on_time_missing for r in runs)} on-time events short);"
        f" {sum(r.result.late_accepted for r in runs)} late events accepted;"
        f" {len(failed)} run(s) not exact ({sum(1 for r in runs if r.error)} of them did not"
        " finish)"
    )
    if not failed:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"chaos: the failed runs' logs and output are under {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
