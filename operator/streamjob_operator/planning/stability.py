"""The STABLE gate: more than "seen RUNNING once".

A deployment is stable when its job runs, has completed ``stability.checkpoints``
checkpoints since it was submitted, and has not restarted for ``stability.window``
(measured from the deploy, or from the last restart the operator saw, whichever is
later, with the injected clock). A deployment not stable ``stability.timeout`` after
it began is failed, or rolled back when ``rollback.enabled``.

A job that FINISHED (a bounded job that reached the end of its input, as the Flink
operator's "a job that finished on its own is marked stable") has nothing left to
prove: the deployment is stable, however few checkpoints or how short a window the
operator saw. Otherwise a bounded job that ends before a pass sees its checkpoints
(a short job, a busy operator) would be declared failed at the timeout.

Checkpoints are counted by the JobManager for the job it runs (``counts.completed``,
savepoints included); a JobManager failover restarts that count, which only delays
the gate.
"""

from __future__ import annotations

import dataclasses
import datetime

from streamjob_operator.api import models
from streamjob_operator.planning import clock, observed
from streamjob_runtime.api import models as rest


@dataclasses.dataclass(frozen=True)
class Verdict:
    stable: bool
    timed_out: bool
    why_not: str  # empty when stable
    next_check: datetime.datetime | None  # when the window ends, or the timeout


def judge(
    spec: models.StreamJobSpec,
    status: models.StreamJobStatus,
    seen: observed.Observed,
    now: datetime.datetime,
) -> Verdict:
    deployed_at = status.reconciliation.deployedAt
    if deployed_at is None:
        return Verdict(False, False, "it was not deployed yet", None)
    if seen.rest_reachable and seen.job is not None and seen.job.state is rest.JobStatus.FINISHED:
        return Verdict(True, False, "", None)
    start = clock.parse_time(deployed_at)
    deadline = start + clock.duration(spec.stability.timeout)
    quiet_since = start
    if status.job.lastRestartTime is not None:
        quiet_since = max(start, clock.parse_time(status.job.lastRestartTime))
    window_end = quiet_since + clock.duration(spec.stability.window)
    completed = 0 if seen.checkpoints is None else seen.checkpoints.counts.completed
    reasons = []
    if not seen.job_running:
        state = status.job.state or "unknown"
        reasons.append(f"its job is not running ({state})")
    if completed < spec.stability.checkpoints:
        reasons.append(
            f"{completed} of {spec.stability.checkpoints} checkpoints completed since the deploy"
        )
    if now < window_end:
        since = "the last restart" if quiet_since > start else "the deploy"
        reasons.append(f"{spec.stability.window} have not passed since {since}")
    if not reasons:
        return Verdict(True, False, "", None)
    timed_out = now >= deadline
    next_check = min(t for t in (window_end, deadline) if t > now) if not timed_out else None
    return Verdict(False, timed_out, "; ".join(reasons), next_check)
