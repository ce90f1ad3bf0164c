"""The Progressing and Degraded conditions every pass derives from the rest of status.

Table-driven through ``plan()``: an observation and a status in, the two conditions
(status and reason) out, next to the lifecycle state they follow from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.planning import lifecycle, observed, planner
from streamjob_runtime.api import models as rest
from tests.operator.test_planning import (
    GONE,
    NOW,
    State,
    Step,
    ago,
    details,
    encoded,
    raw,
    seen,
    stats,
    status,
)

Lifecycle = models.LifecycleState


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    seen: observed.Observed
    status: models.StreamJobStatus
    lifecycle: Lifecycle
    progressing: tuple[str, str]
    degraded: tuple[str, str]
    spec: dict[str, Any] = dataclasses.field(default_factory=raw)


CASES = [
    Case(
        "stable and running: nothing to do, all well",
        seen(checkpoints=stats()),
        status(),
        Lifecycle.STABLE,
        ("False", "Reconciled"),
        ("False", "AsExpected"),
    ),
    Case(
        "first deployment under way",
        GONE,
        models.StreamJobStatus(),
        Lifecycle.CREATED,
        ("True", "Deploying"),
        ("False", "AsExpected"),
    ),
    Case(
        "an upgrade waiting for its JobManager",
        seen(reachable=False, jm=observed.DeploymentState.PROGRESSING, jobs=()),
        status(
            raw(image="streamjob:2"),
            state=State.UPGRADING,
            step=Step.APPLY_CHILDREN,
            deployed=ago(seconds=10),
        ),
        Lifecycle.UPGRADING,
        ("True", "Upgrading"),
        ("False", "AsExpected"),
        spec=raw(image="streamjob:2"),
    ),
    Case(
        "deployed, waiting for the stability gate",
        seen(checkpoints=stats(completed=0)),
        status(stable=False, deployed=ago(seconds=10)),
        Lifecycle.DEPLOYED,
        ("True", "Stabilizing"),
        ("False", "AsExpected"),
    ),
    Case(
        "not stable within the timeout",
        seen(checkpoints=stats(completed=0)),
        status(stable=False),
        Lifecycle.FAILED,
        ("False", "Reconciled"),
        ("True", "Failed"),
    ),
    Case(
        "the job is restarting",
        seen(details(state=rest.JobStatus.RESTARTING, restarts=1), checkpoints=stats()),
        status(),
        Lifecycle.STABLE,
        ("False", "Reconciled"),
        ("True", "JobRestarting"),
    ),
    Case(
        "the job failed for good",
        seen(details(state=rest.JobStatus.FAILED, failure="boom"), checkpoints=stats()),
        status(),
        Lifecycle.FAILED,
        ("False", "Reconciled"),
        ("True", "Failed"),
    ),
    Case(
        "an invalid spec: the last valid one keeps running, and a person must act",
        seen(checkpoints=stats()),
        status(),
        Lifecycle.STABLE,
        ("False", "Reconciled"),
        ("True", "Error"),
        spec=raw(job={"entrypoint": "examples.wordcount", "parallelism": 0}),
    ),
    Case(
        "rolled back",
        seen(checkpoints=stats()),
        status(raw(image="streamjob:2"), state=State.ROLLED_BACK, stable_spec=encoded()),
        Lifecycle.ROLLED_BACK,
        ("False", "Reconciled"),
        ("True", "RolledBack"),
        spec=raw(image="streamjob:2"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conditions(case: Case) -> None:
    result = planner.plan(case.seen, case.spec, case.status, NOW).status
    assert result.lifecycleState is case.lifecycle
    conditions = {c.type: (c.status, c.reason) for c in result.conditions}
    assert conditions[lifecycle.PROGRESSING] == case.progressing
    assert conditions[lifecycle.DEGRADED] == case.degraded


def test_a_condition_keeps_its_transition_time_while_it_holds() -> None:
    first = planner.plan(seen(checkpoints=stats()), raw(), status(), NOW).status
    later = NOW.replace(minute=30)
    second = planner.plan(seen(checkpoints=stats()), raw(), first, later).status
    before = {c.type: c.lastTransitionTime for c in first.conditions}
    after = {c.type: c.lastTransitionTime for c in second.conditions}
    assert after[lifecycle.DEGRADED] == before[lifecycle.DEGRADED]
    assert after[lifecycle.PROGRESSING] == before[lifecycle.PROGRESSING]
