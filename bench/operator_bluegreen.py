"""The processing gap of a blue-green upgrade through a savepoint, with real JobManager and
TaskManager processes.

The Kubernetes API emulator (``tests/kube``) and its test kubelet (``tests.kube.pods``:
each pod a local process) stand in for a cluster; the operator's handlers run in kopf
against it with the operator's default settings (passes when due, progress check 5 s,
a JobManager's answer looked for every ``answer_check_interval``, 250 ms). A StreamJob with
``upgradeStrategy: blueGreen`` runs ``tests/jobs/keyed_sum.py`` (parallelism 2,
checkpoints every second, ``stamp``: each output line carries the wall-clock time its
sink wrote it) at ``--rate`` events/s. Once STABLE on blue, its ``job.args`` change:
green's JobManager and TaskManagers come up warm, blue's job stops with a savepoint, the
job is submitted to green from it, blue goes.

Reported per upgrade: the processing gap, the longest time between two consecutive
committed output records around the switch (exactly-once output: every record is
counted once, blue's up to the savepoint, green's after); and where it went, from the
status the operator wrote (polled every 20 ms) and the records: the last record of blue
-> the stop savepoint completed (status ``lastSavepoint``) -> the job submitted to green
(``status.job.id`` changes) -> green's first record. The output is checked exact.

    uv run python bench/operator_bluegreen.py [--upgrades 2] [--rate 2000]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the emulator and kubelet live in tests/

from tests.integration.test_exactly_once_recovery import KEYS  # noqa: E402
from tests.jobs import keyed_sum  # noqa: E402
from tests.kube.pods import PodRunner  # noqa: E402
from tests.kube.server import KubeEmulator  # noqa: E402
from tests.operator import live, test_handlers, test_observing  # noqa: E402

from streamjob_operator import handlers  # noqa: E402
from streamjob_operator.acting import actor  # noqa: E402
from streamjob_operator.planning import configuration  # noqa: E402
from streamjob_runtime.connectors import files  # noqa: E402

NAME = "sum"


class StatusLog:
    """The StreamJob's status every 20 ms, with the wall-clock time it was read."""

    def __init__(self, kube: KubeEmulator) -> None:
        self.kube = kube
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                status = test_handlers.status_of(self.kube, NAME)
            except KeyError:  # the CRD is not installed yet
                continue
            self.samples.append((time.time(), status))

    def first(self, since: float, check: Any) -> float | None:
        return next((t for t, s in self.samples if t >= since and check(s)), None)

    def __enter__(self) -> StatusLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def stamps(out: Path) -> list[float]:
    return sorted(float(line.split()[2]) for line in files.read_committed_lines(str(out)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upgrades", type=int, default=2)
    p.add_argument("--rate", type=int, default=2000, help="events per second")
    p.add_argument(
        "--answer-check", type=float, default=None, help="seconds (default: the operator's)"
    )
    args = p.parse_args()
    planning = configuration.OperatorConfiguration()
    if args.answer_check is not None:
        planning = configuration.OperatorConfiguration(
            answer_check_interval=datetime.timedelta(seconds=args.answer_check)
        )
    events = args.rate * (25 + 20 * args.upgrades)  # runs on after the last upgrade
    gaps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, KubeEmulator() as kube:
        work = Path(tmp)
        with PodRunner(kube, work / "pods") as runner, StatusLog(kube) as log:
            reconciler = handlers.Reconciler(
                lambda: _api(kube),
                handlers.Options(planning=planning, acting=actor.Settings(resolve=runner.resolve)),
            )
            spec = live.spec(work, rate=args.rate, events=events, stamp=1, interval=1000)
            spec["checkpointing"]["interval"] = "1s"
            spec["stability"] = {"checkpoints": 2, "window": "2s", "timeout": "3m"}
            spec["upgradeStrategy"] = {"type": "blueGreen"}
            with test_handlers.operator(kube, reconciler):
                kube.create(test_observing.streamjob_body(NAME, spec))
                live.wait_stable(kube, NAME)
                for n in range(args.upgrades):
                    status = test_handlers.status_of(kube, NAME)
                    old, colour = live.job_id(status), status["blueGreen"]["active"]
                    previous = (status.get("lastSavepoint") or {}).get("location")
                    changed = live.spec(
                        work, rate=args.rate + n + 1, events=events, stamp=1, interval=1000
                    )
                    t0 = time.time()
                    live.patch(kube, NAME, {"job": {"args": changed["job"]["args"]}})
                    live.wait_redeployed(kube, NAME, old, "the job on the other colour")
                    live.wait_stable(kube, NAME)
                    time.sleep(2)  # a checkpoint of the new job commits its first records
                    ts = [t for t in stamps(work / "out") if t >= t0 - 5]
                    gap, before, after = max((b - a, a, b) for a, b in itertools.pairwise(ts))
                    saved = log.first(
                        t0,
                        lambda s, before=previous: (
                            (s.get("lastSavepoint") or {}).get("location") not in (None, before)
                        ),
                    )
                    submitted = log.first(t0, lambda s, old=old: live.job_id(s) not in (None, old))
                    gaps.append(gap)
                    new = test_handlers.status_of(kube, NAME)["blueGreen"]["active"]
                    parts = [f"upgrade {n + 1} ({colour} -> {new}): gap {gap:.2f} s"]
                    if saved is not None:
                        parts.append(
                            f"blue's last record -> savepoint in status {saved - before:.2f} s"
                        )
                    if submitted is not None:
                        parts.append(
                            f"-> job id of green in status {submitted - (saved or before):.2f} s"
                        )
                        parts.append(f"-> green's first record {after - submitted:.2f} s")
                    parts.append(f"(spec change -> blue's last record {before - t0:.2f} s)")
                    print("; ".join(parts), flush=True)
                live.wait_status(
                    kube,
                    NAME,
                    lambda s: s.get("job", {}).get("state") in live.TERMINAL,
                    "the job to finish",
                    timeout=events / args.rate + 120,
                )
            got = collections.Counter(
                (int(k), int(n))
                for k, n, _ in (
                    line.split() for line in files.read_committed_lines(str(work / "out"))
                )
            )
            want = keyed_sum.expected(events, KEYS)
            lost, duplicated = sum((want - got).values()), sum((got - want).values())
    print(
        f"median gap over {len(gaps)} upgrades: {statistics.median(gaps):.2f} s; output of"
        f" {events:,} events: {lost} lost, {duplicated} duplicated"
    )
    return 0 if lost == duplicated == 0 else 1


async def _api(kube: KubeEmulator) -> Any:
    from tests.kube import fixtures

    return fixtures.api_client(kube)


if __name__ == "__main__":
    sys.exit(main())
