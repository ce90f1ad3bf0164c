"""The operator's own settings that planning reads (Helm values, not the StreamJob spec)."""

from __future__ import annotations

import dataclasses
import datetime


@dataclasses.dataclass(frozen=True)
class OperatorConfiguration:
    """Settings of the operator, the same for every StreamJob.

    - ``savepoint_on_deletion``: deleting a StreamJob whose job runs first stops it with
      a final savepoint (when ``savepoints.directory`` is set), waiting at most
      ``deletion_savepoint_timeout`` after the deletion was asked for; then it is
      cancelled. Off: the job is cancelled. (The Flink operator's
      ``kubernetes.operator.savepoint.on-deletion``.)
    - ``progress_check_interval``: how soon to look again while something is under way.
    - ``answer_check_interval``: how soon to look again while waiting for a JobManager
      to act on a request (a savepoint, a cancel, a submission), which takes a second or
      less: during a blue-green switch or an upgrade the job's downtime includes up to
      this much of waiting to learn the stop savepoint completed.
    - ``reconcile_interval``: how soon to look again when nothing is.
    - ``allow_privileged_pods``: pod templates may ask for privileged containers, host
      namespaces and ports, hostPath volumes, added capabilities and root; off, such a
      spec is invalid (``validation.pod_template_errors``).
    - ``checkpoint_status_interval``: while a job runs, look again after its checkpoint
      interval, but not sooner than this, so that ``status.lastCheckpoint`` (the LAST
      CHECKPOINT column of ``kubectl get sj``) is at most about that stale: it bounds the
      passes (and status writes) a running StreamJob costs.
    - ``deletion_timeout``: how long a step waits for Deployments it deleted before it
      reports them stuck (it keeps waiting: new ones cannot take their names before).
    """

    savepoint_on_deletion: bool = False
    deletion_savepoint_timeout: datetime.timedelta = datetime.timedelta(minutes=5)
    progress_check_interval: datetime.timedelta = datetime.timedelta(seconds=5)
    answer_check_interval: datetime.timedelta = datetime.timedelta(milliseconds=250)
    reconcile_interval: datetime.timedelta = datetime.timedelta(seconds=60)
    allow_privileged_pods: bool = False
    checkpoint_status_interval: datetime.timedelta = datetime.timedelta(seconds=15)
    deletion_timeout: datetime.timedelta = datetime.timedelta(minutes=5)
