"""The operator's watch on the Deployments it manages (tests.operator.test_handlers' setup):
a step waiting for its JobManager goes on when the Deployment becomes ready, not a
progress check later."""

from __future__ import annotations

import datetime

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
        kube.wait_for(
            lambda: all(
                kube.get("apps/v1", "deployments", name, NAMESPACE)
                for name in ("wordcount-jobmanager", "wordcount-taskmanager")
            ),
            timeout=20,
            what="both Deployments",
        )
        kube.wait_for(
            lambda: reconciler.next_pass_in(NAMESPACE, "wordcount") > 30,
            timeout=20,
            what="the next pass a progress check (60 s) away",
        )
        assert fake_jobmanager.submissions == []
        for name in ("wordcount-jobmanager", "wordcount-taskmanager"):
            test_observing.mark_ready(kube, name)
        # The watch makes the pass due at once: submitted well before the 60 s.
        test_handlers.wait_lifecycle(kube, "DEPLOYED")
        assert len(fake_jobmanager.submissions) == 1
