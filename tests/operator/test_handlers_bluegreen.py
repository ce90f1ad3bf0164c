"""A blue-green upgrade end to end: kopf runs the handlers against the Kubernetes emulator,
and each colour's JobManager is a fake of its own, reached through the resolver by the
colour in its Service's name.

Nothing runs pods: a small controller marks every Deployment ready once written, reports
slots on the colour's fake JobManager only then, and empties that fake when its
JobManager Deployment goes (no HA).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from streamjob_operator.api import models
from streamjob_runtime.api import models as rest
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_handlers, test_observing
from tests.operator.test_observing import NAMESPACE, FakeJobManager

kube = fixtures.kube

SPEC: dict[str, Any] = {
    **test_handlers.SPEC,
    "upgradeStrategy": {"type": "blueGreen"},
}


class ColourJobManager(FakeJobManager):
    """The fake JobManager with ``GET /overview`` reporting ``slots`` registered slots."""

    def __init__(self) -> None:
        super().__init__()
        self.slots = 0

    def _routes(self, r: web.UrlDispatcher) -> None:
        super()._routes(r)
        r.add_get("/overview", self._overview)

    async def _overview(self, request: web.Request) -> web.Response:
        jobs = list(self.jobs.values())
        overview = rest.ClusterOverview(
            taskmanagers=1 if self.slots else 0,
            slots_total=self.slots,
            slots_available=self.slots,
            jobs_running=sum(j.state is rest.JobStatus.RUNNING for j in jobs),
            jobs_finished=sum(j.state is rest.JobStatus.FINISHED for j in jobs),
            jobs_failed=sum(j.state is rest.JobStatus.FAILED for j in jobs),
            jobs_canceled=sum(j.state is rest.JobStatus.CANCELED for j in jobs),
            version="fake",
        )
        return web.Response(
            text=overview.model_dump_json(), status=200, content_type="application/json"
        )


@contextlib.contextmanager
def colours() -> Iterator[dict[str, ColourJobManager]]:
    """A fake per cluster: "blue", "green" and "" (the uncoloured one of recreate)."""
    blue, green, uncoloured = ColourJobManager(), ColourJobManager(), ColourJobManager()
    with blue, green, uncoloured:
        yield {"blue": blue, "green": green, "": uncoloured}


def prefix(colour: str) -> str:
    """The names of a cluster's children start with this."""
    return f"wordcount-{colour}-" if colour else "wordcount-"


def resolver(jms: dict[str, ColourJobManager]) -> Callable[[str], str]:
    def resolve(service_url: str) -> str:
        host = service_url.split("://", 1)[-1]
        for colour, jm in jms.items():
            if host.startswith(f"{prefix(colour)}jobmanager."):
                return jm.url
        raise AssertionError(f"no fake JobManager for {service_url}")

    return resolve


class Controller:
    """Every Deployment ready once written; a colour's slots registered once its
    TaskManager is; a colour's fake emptied when its JobManager Deployment goes."""

    def __init__(self, kube: KubeEmulator, jms: dict[str, ColourJobManager]) -> None:
        self.kube = kube
        self.jms = jms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            names = set()
            for dep in self.kube.list("apps/v1", "deployments", NAMESPACE):
                name = dep["metadata"]["name"]
                names.add(name)
                status = dep.get("status") or {}
                if status.get("observedGeneration") != dep["metadata"]["generation"]:
                    with contextlib.suppress(Exception):  # deleted meanwhile
                        test_observing.mark_ready(self.kube, name)
            for colour, jm in self.jms.items():
                if f"{prefix(colour)}taskmanager" in names:
                    jm.slots = 2
                else:
                    jm.slots = 0
                if f"{prefix(colour)}jobmanager" not in names and jm.jobs:
                    jm.jobs.clear()
                    jm.savepoints.clear()

    def __enter__(self) -> Controller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def deployments(kube: KubeEmulator) -> set[str]:
    return {d["metadata"]["name"] for d in kube.list("apps/v1", "deployments", NAMESPACE)}


def test_a_blue_green_upgrade_through_kopf_warms_green_then_switches_from_the_stop_savepoint(
    kube: KubeEmulator,
) -> None:
    with colours() as jms:
        blue, green = jms["blue"], jms["green"]
        reconciler = test_handlers.reconciler_for(kube, resolve=resolver(jms))
        with test_handlers.operator(kube, reconciler), Controller(kube, jms):
            test_handlers.create(kube, spec=SPEC)
            test_handlers.wait_lifecycle(kube, "DEPLOYED")
            (old,) = blue.jobs
            assert green.submissions == []
            assert deployments(kube) == {"wordcount-blue-jobmanager", "wordcount-blue-taskmanager"}
            assert test_handlers.status_of(kube)["blueGreen"]["active"] == "blue"
            blue.checkpoints[old] = 1
            test_handlers.wait_lifecycle(kube, "STABLE")

            kube.patch(
                test_handlers.GROUP_VERSION,
                models.PLURAL,
                "wordcount",
                {"spec": {"image": "streamjob:2"}},
                namespace=NAMESPACE,
            )
            kube.wait_for(lambda: green.submissions, timeout=30, what="the green submission")
            # green was asked for its slots before blue was asked to stop
            stop = f"POST /jobs/{old}/stop"
            assert stop in blue.requests
            assert "GET /overview" in green.requests
            (submission,) = green.submissions
            status = test_handlers.status_of(kube)
            assert status["lastSavepoint"]["trigger"] == "upgrade"
            assert submission.savepoint_path == status["lastSavepoint"]["location"]
            assert blue.jobs[old].state is rest.JobStatus.FINISHED
            kube.wait_for(
                lambda: (
                    test_handlers.status_of(kube)["reconciliation"].get("step") == "await-stable"
                ),
                timeout=30,
                what="the new job adopted",
            )
            assert {"wordcount-blue-jobmanager", "wordcount-green-jobmanager"} <= deployments(kube)

            (new,) = green.jobs
            green.checkpoints[new] = 1
            kube.wait_for(
                lambda: test_handlers.status_of(kube).get("blueGreen", {}).get("active") == "green",
                timeout=30,
                what="the switch to green",
            )
            test_handlers.wait_lifecycle(kube, "STABLE")
            assert deployments(kube) == {
                "wordcount-green-jobmanager",
                "wordcount-green-taskmanager",
            }
            for kind, name in [
                ("services", "wordcount-blue-jobmanager"),
                ("configmaps", "wordcount-blue-config"),
                ("serviceaccounts", "wordcount-blue-taskmanager"),
            ]:
                assert kube.get("v1", kind, name, NAMESPACE) is None, f"{kind}/{name}"
            tm = kube.get("apps/v1", "deployments", "wordcount-green-taskmanager", NAMESPACE)
            assert tm is not None
            assert tm["spec"]["template"]["spec"]["containers"][0]["image"] == "streamjob:2"
            kube.wait_for(  # an Event follows the status write of its pass
                lambda: "Switched" in test_handlers.reasons(kube),
                timeout=10,
                what="the Switched Event",
            )
            reasons = test_handlers.reasons(kube)
            assert "BlueGreenUnsupported" not in reasons
            assert reasons.index("Switched") > reasons.index("Upgrading")

            kube.delete(test_handlers.GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
            kube.wait_for(
                lambda: (
                    kube.get(test_handlers.GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
                    is None
                ),
                timeout=30,
                what="the StreamJob gone",
            )
            # the job was cancelled before the StreamJob went (its jobs went with its
            # JobManager's Deployment: the controller empties the fake then)
            assert f"PATCH /jobs/{new}" in green.requests


def children(kube: KubeEmulator, colour: str) -> dict[str, bool]:
    """Whether each of a cluster's children but its Deployments exists."""
    names = [
        ("v1", "services", "jobmanager"),
        ("v1", "configmaps", "config"),
        ("v1", "serviceaccounts", "jobmanager"),
        ("v1", "serviceaccounts", "taskmanager"),
        ("rbac.authorization.k8s.io/v1", "roles", "jobmanager"),
        ("rbac.authorization.k8s.io/v1", "rolebindings", "jobmanager"),
    ]
    return {
        f"{kind}/{prefix(colour)}{name}": kube.get(
            version, kind, f"{prefix(colour)}{name}", NAMESPACE
        )
        is not None
        for version, kind, name in names
    }


def patch_spec(kube: KubeEmulator, spec: dict[str, Any]) -> None:
    kube.patch(
        test_handlers.GROUP_VERSION, models.PLURAL, "wordcount", {"spec": spec}, namespace=NAMESPACE
    )


def reconciled(kube: KubeEmulator) -> bool:
    body = kube.get(test_handlers.GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
    assert body is not None
    seen = (body.get("status") or {}).get("reconciliation", {}).get("observedGeneration")
    return bool(seen == body["metadata"]["generation"])


def test_switching_to_recreate_while_suspended_removes_the_colour_when_it_resumes(
    kube: KubeEmulator,
) -> None:
    with colours() as jms:
        blue, uncoloured = jms["blue"], jms[""]
        reconciler = test_handlers.reconciler_for(kube, resolve=resolver(jms))
        with test_handlers.operator(kube, reconciler), Controller(kube, jms):
            test_handlers.create(kube, spec=SPEC)
            test_handlers.wait_lifecycle(kube, "DEPLOYED")
            assert all(children(kube, "blue").values())
            patch_spec(kube, {"job": {"state": "suspended"}})
            test_handlers.wait_lifecycle(kube, "SUSPENDED")
            suspended = test_handlers.status_of(kube)["lastSavepoint"]
            assert suspended["trigger"] == "suspend"
            assert deployments(kube) == set()
            assert all(children(kube, "blue").values())  # a suspended colour keeps these

            patch_spec(kube, {"upgradeStrategy": {"type": "recreate"}})
            kube.wait_for(lambda: reconciled(kube), timeout=30, what="the switch recorded")
            assert test_handlers.lifecycle(kube) == "SUSPENDED"
            assert deployments(kube) == set()

            patch_spec(kube, {"job": {"state": "running"}})
            kube.wait_for(lambda: uncoloured.submissions, timeout=30, what="the resubmission")
            (submission,) = uncoloured.submissions
            assert submission.savepoint_path == suspended["location"]
            test_handlers.wait_lifecycle(kube, "DEPLOYED")
            assert deployments(kube) == {"wordcount-jobmanager", "wordcount-taskmanager"}
            assert not any(children(kube, "blue").values()), children(kube, "blue")
            assert all(children(kube, "").values()), children(kube, "")
            assert len(blue.submissions) == 1
            assert test_handlers.status_of(kube).get("blueGreen") is None
