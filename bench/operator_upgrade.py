"""Savepoint upgrade latency end to end, with real JobManager and TaskManager processes.

The Kubernetes API emulator (``tests/kube``) and its test kubelet (``tests.kube.pods``:
each pod a local process, started in about a second or two) stand in for a cluster; the
operator's handlers run in kopf against it with the operator's default settings (a pass
runs when due: at a change of its Deployments, or when the last one asked, e.g. every
``answer_check_interval`` while a JobManager acts on a request; a 10 s timer as a safety
net), reaching the JobManagers through the kubelet's Service resolution.

A StreamJob running ``tests/jobs/keyed_sum.py`` (parallelism 2, checkpoints every
second) is deployed and waited STABLE; then ``--upgrades`` times its ``job.args``
change (a savepoint upgrade: stop-with-savepoint, delete the Deployments, apply new
ones, submit from the savepoint). Reported per upgrade: from the spec change to the new
job RUNNING (the job's downtime as the operator drives it) and to STABLE.

    uv run python bench/operator_upgrade.py [--upgrades 2] [--progress-check 5]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the emulator and kubelet live in tests/

from tests.kube import fixtures  # noqa: E402
from tests.kube.pods import PodRunner  # noqa: E402
from tests.kube.server import KubeEmulator  # noqa: E402
from tests.operator import live, test_handlers, test_observing  # noqa: E402

from streamjob_operator import handlers  # noqa: E402
from streamjob_operator.acting import actor  # noqa: E402
from streamjob_operator.planning import configuration  # noqa: E402


def status(kube: KubeEmulator) -> dict[str, Any]:
    return test_handlers.status_of(kube, "sum")


def wait(kube: KubeEmulator, what: str, check: Any, timeout: float = 180) -> float:
    kube.wait_for(lambda: check(status(kube)), timeout=timeout, what=what)
    return time.monotonic()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upgrades", type=int, default=2)
    p.add_argument("--progress-check", type=float, default=5.0, help="seconds")
    args = p.parse_args()
    planning = configuration.OperatorConfiguration(
        progress_check_interval=datetime.timedelta(seconds=args.progress_check)
    )
    with tempfile.TemporaryDirectory() as tmp, KubeEmulator() as kube:
        work = Path(tmp)
        with PodRunner(kube, work / "pods") as runner:

            async def api() -> Any:
                return fixtures.api_client(kube)

            options = handlers.Options(
                planning=planning, acting=actor.Settings(resolve=runner.resolve)
            )
            reconciler = handlers.Reconciler(api, options)
            spec = live.spec(work, rate=2_000, events=10_000_000)
            spec["checkpointing"]["interval"] = "1s"
            spec["stability"] = {"checkpoints": 2, "window": "2s", "timeout": "3m"}
            with test_handlers.operator(kube, reconciler):
                started = time.monotonic()
                kube.create(test_observing.streamjob_body("sum", spec))
                wait(kube, "STABLE", lambda s: s.get("lifecycleState") == "STABLE")
                print(f"first deployment STABLE in {time.monotonic() - started:.1f} s")
                running, stable = [], []
                for n in range(args.upgrades):
                    old = live.job_id(status(kube))
                    changed = live.spec(work, rate=2_000 + n + 1, events=10_000_000)
                    t0 = time.monotonic()
                    live.patch(kube, "sum", {"job": {"args": changed["job"]["args"]}})
                    t1 = wait(
                        kube,
                        "the upgraded job RUNNING",
                        lambda s, old=old: (
                            live.job_id(s) not in (None, old)
                            and s["job"].get("state") == "RUNNING"
                            and s["reconciliation"].get("step") is None
                        ),
                    )
                    t2 = wait(kube, "STABLE", lambda s: s.get("lifecycleState") == "STABLE")
                    running.append(t1 - t0)
                    stable.append(t2 - t0)
                    print(
                        f"upgrade {n + 1}: new job RUNNING {t1 - t0:.1f} s, STABLE {t2 - t0:.1f} s"
                    )
                med_running, med_stable = statistics.median(running), statistics.median(stable)
                print(
                    f"progress check {args.progress_check} s: median to RUNNING"
                    f" {med_running:.1f} s, to STABLE {med_stable:.1f} s"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
