"""The operator's watch on the Deployments it manages (tests.operator.test_handlers' setup):
a step waiting for its JobManager goes on when the Deployment becomes ready, not a
progress check later."""

from __future__ import annotations

import dataclasses
import datetime

from streamjob_operator import handlers
from streamjob_operator.planning import configuration
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE, FakeJobManager

kube = fixtures.kube
fake_jobmanager = test_observing.fake_jobmanager

SLOW = configuration.OperatorConfiguration(
    progress_check_interval=datetime.timedelta(seconds=60),
    reconcile_interval=datetime.timedelta(seconds=120),
)

DEPLOYMENTS = ("wordcount-jobmanager", "wordcount-taskmanager")


def wait_for_deployments_not_ready(kube: KubeEmulator, reconciler: handlers.Reconciler) -> None:
    """Both Deployments exist (not ready: no controller here) and the next pass is a
    progress check (60 s) away, so only their watch can make it run soon."""
    kube.wait_for(
        lambda: all(kube.get("apps/v1", "deployments", name, NAMESPACE) for name in DEPLOYMENTS),
        timeout=20,
        what="both Deployments",
    )
    kube.wait_for(
        lambda: reconciler.next_pass_in(NAMESPACE, "wordcount") > 30,
        timeout=20,
        what="the next pass a progress check (60 s) away",
    )


def test_a_deployment_that_becomes_ready_wakes_the_step_waiting_for_it(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    reconciler = test_handlers.reconciler_for(kube, fake_jobmanager, planning=SLOW)
    with test_handlers.operator(kube, reconciler):
        test_handlers.create(kube)
        kube.wait_for(
            lambda: (
                test_handlers.status_of(kube).get("reconciliation", {}).get("step")
                == "apply-children"
            ),
            timeout=20,
            what="the first pass",
        )
        wait_for_deployments_not_ready(kube, reconciler)
        assert fake_jobmanager.submissions == []
        for name in DEPLOYMENTS:
            test_observing.mark_ready(kube, name)
        # The watch makes the pass due at once: submitted well before the 60 s.
        test_handlers.wait_lifecycle(kube, "DEPLOYED")
        assert len(fake_jobmanager.submissions) == 1


def test_passes_run_when_due_and_when_woken_without_waiting_for_the_timer(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    """With the timer every 60 s: the Deployments becoming ready run the pass at once
    (the JobManager is asked and the job submitted), and the pass the submission asked
    for a second later (``answer_check_interval``) runs then and records the job."""
    reconciler = test_handlers.reconciler_for(kube, fake_jobmanager, planning=SLOW)
    reconciler.options = dataclasses.replace(reconciler.options, timer_interval=60.0)
    with test_handlers.operator(kube, reconciler):
        test_handlers.create(kube)
        wait_for_deployments_not_ready(kube, reconciler)
        for name in DEPLOYMENTS:
            test_observing.mark_ready(kube, name)
        kube.wait_for(
            lambda: len(fake_jobmanager.submissions) == 1, timeout=15, what="the submission"
        )

        # adopted by the pass due a second after the submission, not the timer's
        def adopted() -> bool:
            status = test_handlers.status_of(kube)
            return status.get("reconciliation", {}).get("step") is None and (
                status.get("job", {}).get("state") == "RUNNING"
            )

        kube.wait_for(adopted, timeout=15, what="the job adopted")
        metric = reconciler.metrics.registry.get_sample_value(
            "streamjob_operator_reconciles_total", {"trigger": "due"}
        )
        assert metric is not None
        assert metric >= 2
