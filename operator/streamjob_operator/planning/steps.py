"""The steps of a redeploy, as ``status.reconciliation.step`` records them.

A redeploy (first deployment, upgrade, restart, rescale, suspend, resume, rollback)
walks some suffix of :data:`ORDER`. Before a pass takes a step's destructive action it
writes the step (and the target spec, and the chosen restore path) to status; a
restarted operator reads the step back and carries on from there. A step's action is
safe to repeat: stopping a stopped job, deleting deleted Deployments and applying
applied children change nothing, and a submission is not repeated once the
JobManager lists a job.
"""

from __future__ import annotations

import enum


class Step(enum.StrEnum):
    STOP_JOB = "stop-job"  # stop-with-savepoint or cancel; then choose the restore path
    DELETE_DEPLOYMENTS = "delete-deployments"  # the old JobManager and TaskManagers go
    APPLY_CHILDREN = "apply-children"  # the new children; wait for the JobManager
    SUBMIT_JOB = "submit-job"  # submit, restoring from the chosen path


ORDER = (Step.STOP_JOB, Step.DELETE_DEPLOYMENTS, Step.APPLY_CHILDREN, Step.SUBMIT_JOB)
