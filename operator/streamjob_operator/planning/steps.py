"""The steps of a redeploy, as ``status.reconciliation.step`` records them.

A redeploy in place (first deployment, ``recreate`` upgrade, restart, rescale,
suspend, resume, rollback) walks some suffix of :data:`ORDER`. A ``blueGreen`` upgrade
walks :data:`BLUE_GREEN_ORDER` and, when the new colour does not become stable,
:data:`FALLBACK_ORDER` (``planning.bluegreen``). Before a pass takes a step's destructive action it
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
    # the JobManager lost the job (it restarted without HA): submit it again from its
    # newest completed checkpoint (``planning.recovery``)
    RECOVER_JOB = "recover-job"
    # blueGreen: the next colour comes up next to the active one
    DEPLOY_NEXT = "deploy-next"  # the next colour's children, warm, no job; wait for slots
    STOP_ACTIVE = "stop-active"  # stop the active colour's job; choose the restore path
    SUBMIT_NEXT = "submit-next"  # submit to the next colour from that path
    AWAIT_STABLE = "await-stable"  # the stability gate, the old colour still warm
    REMOVE_PREVIOUS = "remove-previous"  # the old colour's children go; then it flips
    # blueGreen fallback: back to the old colour, still warm
    STOP_NEXT = "stop-next"  # cancel the next colour's job
    SUBMIT_ACTIVE = "submit-active"  # resubmit to the old colour from the same path
    REMOVE_NEXT = "remove-next"  # the next colour's children go


ORDER = (Step.STOP_JOB, Step.DELETE_DEPLOYMENTS, Step.APPLY_CHILDREN, Step.SUBMIT_JOB)
BLUE_GREEN_ORDER = (
    Step.DEPLOY_NEXT,
    Step.STOP_ACTIVE,
    Step.SUBMIT_NEXT,
    Step.AWAIT_STABLE,
    Step.REMOVE_PREVIOUS,
)
FALLBACK_ORDER = (Step.STOP_NEXT, Step.SUBMIT_ACTIVE, Step.REMOVE_NEXT)
ON_NEXT = frozenset({Step.SUBMIT_NEXT, Step.AWAIT_STABLE, Step.REMOVE_PREVIOUS, Step.STOP_NEXT})
"""The blue-green steps during which ``status.job`` is (to be) the next colour's job."""
