"""What a pass costs the API server once nothing is under way: the mechanisms that let one
operator keep 1,000 StreamJobs (``bench/operator_scale.py`` measures the figures; these
tests count requests, never time).

kopf runs the handlers against the emulator; the emulator's request log says what each
pass read and wrote.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
from typing import Any, cast

import kopf
import pytest
from kubernetes_asyncio import client

from streamjob_operator import handlers
from streamjob_operator.acting import actor, events
from streamjob_operator.api import models
from streamjob_operator.observing import kubeapi
from streamjob_operator.planning import actions, configuration
from tests.kube import KubeEmulator, fixtures
from tests.kube.server import RequestRecord
from tests.operator import test_acting, test_handlers, test_observing
from tests.operator.test_handlers import (
    DeploymentController,
    create,
    operator,
    reconciler_for,
    status_of,
    wait_lifecycle,
)
from tests.operator.test_observing import NAMESPACE, FakeJobManager

kube = fixtures.kube
fake_jobmanager = test_observing.fake_jobmanager

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def by_resource(records: list[RequestRecord]) -> collections.Counter[str]:
    """``METHOD plural`` of each namespaced request (the status: ``streamjobs/status``)."""
    counts: collections.Counter[str] = collections.Counter()
    for r in records:
        parts = r.path.strip("/").split("/")
        if "namespaces" not in parts or len(parts) <= parts.index("namespaces") + 2:
            continue  # discovery, kopf's namespace and CRD lookups
        plural = parts[parts.index("namespaces") + 2]
        if parts[-1] == "status":
            plural += "/status"
        counts[f"{r.method} {plural}"] += 1
    return counts


def test_passes_over_a_stable_streamjob_and_a_resumed_operator_write_nothing(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    """Steady state: a timer pass reads the StreamJob and its two Deployments and asks
    the JobManager; it writes nothing (no status field that changes with the clock), and
    does not read the credentials' Secrets again. A restarted operator (resume) writes
    nothing either."""
    reconciler = reconciler_for(kube, fake_jobmanager)
    with operator(kube, reconciler), DeploymentController(kube, fake_jobmanager):
        create(kube)
        wait_lifecycle(kube, "DEPLOYED")
        (jid,) = fake_jobmanager.jobs
        fake_jobmanager.checkpoints[jid] = 1
        wait_lifecycle(kube, "STABLE")
        # the pass that made it STABLE posts its Event after its status write
        kube.wait_for(lambda: "Stable" in test_handlers.reasons(kube), timeout=10)
        mark, passes = len(kube.requests), reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= passes + 3, timeout=30, what="3 passes")
        steady = by_resource(kube.requests[mark:])
    assert not [k for k in steady if k.split()[0] in WRITES], steady
    assert "GET secrets" not in steady, steady  # credentials are remembered
    assert set(steady) == {"GET streamjobs", "GET deployments"}, steady

    mark = len(kube.requests)
    resumed = reconciler_for(kube, fake_jobmanager)
    with operator(kube, resumed), DeploymentController(kube, fake_jobmanager):
        kube.wait_for(lambda: resumed.passes >= 2, timeout=30, what="the resume and a timer pass")
        stored = kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE)
    assert stored is not None
    after_resume = by_resource(kube.requests[mark:])
    assert not [k for k in after_resume if k.split()[0] in WRITES], after_resume
    assert status_of(kube)["lifecycleState"] == "STABLE"


def test_a_created_streamjob_reaches_stable_reading_each_child_once_a_pass(
    kube: KubeEmulator, fake_jobmanager: FakeJobManager
) -> None:
    """From creation to STABLE (default settings): each pass reads the StreamJob and at
    most its two Deployments once (applying the children takes them as observed);
    the credentials' Secrets are created without a read; every child is created once."""
    reconciler = reconciler_for(
        kube, fake_jobmanager, planning=configuration.OperatorConfiguration()
    )
    with operator(kube, reconciler), DeploymentController(kube, fake_jobmanager):
        mark = len(kube.requests)
        create(kube, spec={**test_handlers.SPEC, "checkpointing": {"interval": "1s"}})
        wait_lifecycle(kube, "DEPLOYED")
        (jid,) = fake_jobmanager.jobs
        fake_jobmanager.checkpoints[jid] = 1
        wait_lifecycle(kube, "STABLE")
        kube.wait_for(lambda: "Stable" in test_handlers.reasons(kube), timeout=10)
        made = by_resource(kube.requests[mark:])
    passes = made["GET streamjobs"]  # one a pass (and one per conflict's re-read)
    assert passes >= 3, made  # create, submit, STABLE at least
    assert made["GET deployments"] <= 2 * passes, made  # was 3 a pass on average
    assert "GET secrets" not in made, made
    assert made["POST secrets"] == 3, made
    assert made["POST deployments"] == 2, made
    assert not [k for k in made if k.startswith("PUT")], made


def test_a_streamjob_waiting_for_its_jobmanager_is_not_reapplied_at_every_pass(
    kube: KubeEmulator,
) -> None:
    """While the step waits for a JobManager that never gets ready, each pass checks its
    two Deployments carry the children's hash, instead of reading (and maybe replacing)
    all twelve children, and takes them as it observed them: each is read once a pass;
    nothing is written."""
    reconciler = reconciler_for(kube)
    with operator(kube, reconciler):
        created = len(kube.requests)
        create(kube)
        kube.wait_for(
            lambda: status_of(kube).get("reconciliation", {}).get("step") == "apply-children",
            timeout=20,
        )
        # the step is written before its children are applied
        stored = kube.wait_for(
            lambda: kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE),
            timeout=20,
            what="the children",
        )
        assert stored is not None
        assert "streamjob.dev/children-hash" in stored["metadata"]["annotations"]
        # the pass that applied them ends (its final status write; kopf's own record of
        # the create handler) before the next begins
        first = reconciler.passes
        kube.wait_for(lambda: reconciler.passes >= first + 1, timeout=30, what="a pass")
        mark, passes = len(kube.requests), reconciler.passes
        # the first pass made the credentials' three Secrets once (the StreamJob is new:
        # created without reading them first), not again before it applied the children
        made = by_resource(kube.requests[created:mark])
        assert (made["GET secrets"], made["POST secrets"]) == (0, 3), made
        kube.wait_for(lambda: reconciler.passes >= passes + 3, timeout=30, what="3 passes")
        waiting = by_resource(kube.requests[mark:])
        # a Deployment deleted by hand is applied again (its hash check fails)
        kube.delete("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE)
        kube.wait_for(
            lambda: kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE),
            timeout=20,
            what="the JobManager Deployment applied again",
        )
    assert not [k for k in waiting if k.split()[0] in WRITES], waiting
    assert set(waiting) == {"GET streamjobs", "GET deployments"}, waiting
    # each pass reads the StreamJob, then its two Deployments once (the counts began
    # inside a pass, after its StreamJob read, hence one more pass's two)
    assert waiting["GET deployments"] <= 2 * (waiting["GET streamjobs"] + 1), waiting


def test_an_event_posted_again_after_the_same_status_write_is_stored_once(
    kube: KubeEmulator,
) -> None:
    """Events are named after what they record and the status write they follow: a POST
    sent again (a retry whose first attempt arrived) meets 409 and is done."""
    test_observing.create_streamjob(kube)
    streamjob = test_observing.read_resource(kube)
    record = actions.RecordEvent(actions.EventType.NORMAL, "Deploying", "deploying the job")
    now = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)

    async def post(after: str) -> bool:
        async with fixtures.api_client(kube) as api:
            return await events.post(
                api, streamjob, record, now, actor.COMPONENT, "test", after=after
            )

    assert asyncio.run(post("41")) is True
    assert asyncio.run(post("41")) is False  # the same Event: stored already
    assert asyncio.run(post("42")) is True  # after another status write: a new one
    posted = kube.events_for("wordcount", NAMESPACE, kind="StreamJob")
    assert [e["reason"] for e in posted] == ["Deploying", "Deploying"]
    assert len({e["metadata"]["name"] for e in posted}) == 2
    assert all(e["metadata"]["name"].startswith("wordcount.") for e in posted)


def test_the_lifecycle_gauges_follow_each_streamjobs_state_changes() -> None:
    """The StreamJobs-by-lifecycle gauges are kept by each StreamJob's change (the old
    state's gauge down, the new one's up), not counted over every StreamJob at every
    pass; the same pass twice changes nothing, a forgotten StreamJob leaves its gauge."""
    metrics = handlers.Metrics()
    State = models.LifecycleState

    def gauges() -> dict[str, float]:
        return {
            s.value: metrics.registry.get_sample_value(
                "streamjob_operator_streamjobs", {"lifecycle": s.value}
            )
            or 0.0
            for s in State
        }

    for key in ("a", "b", "c"):
        metrics.lifecycle(key, State.CREATED)
    metrics.lifecycle("a", State.DEPLOYED)
    metrics.lifecycle("a", State.STABLE)
    metrics.lifecycle("a", State.STABLE)
    metrics.lifecycle("b", State.STABLE)
    metrics.lifecycle("c", None)
    metrics.lifecycle("never-seen", None)
    expected = {s.value: 0.0 for s in State}
    expected.update({State.STABLE.value: 2.0})
    assert gauges() == expected


class NotCopyable:
    """A value that fails the test if kopf deep-copies it."""

    def __deepcopy__(self, memo: object) -> NotCopyable:
        raise AssertionError("deep-copied")


def test_kopfs_essence_of_an_event_is_built_without_copying_status_or_system_metadata() -> None:
    """The diff-base storage (``handlers.DiffBaseStorage``) gives kopf the same essence
    of a body as kopf's own, without deep-copying its status and system metadata (kopf
    builds one for every event of every StreamJob and Deployment it watches)."""
    kopfs = kopf.AnnotationsDiffBaseStorage(
        prefix=handlers.PREFIX, key="last-handled-configuration"
    )
    ours = handlers.DiffBaseStorage(prefix=handlers.PREFIX, key="last-handled-configuration")
    body: dict[str, Any] = {
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {
            "name": "wordcount",
            "namespace": NAMESPACE,
            "uid": "u1",
            "resourceVersion": "7",
            "generation": 2,
            "labels": {"team": "a"},
            "annotations": {
                "note": "kept",
                "streamjob.dev/last-handled-configuration": '{"spec": {}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
            "finalizers": [handlers.FINALIZER],
            "ownerReferences": [{"kind": "Thing", "name": "x", "uid": "u0"}],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"image": "streamjob:1", "job": {"parallelism": 2}, "empty": {}},
        "status": {"lifecycleState": "STABLE", "conditions": [{"type": "Ready"}]},
    }
    expected = kopfs.build(body=kopf.Body(cast(kopf.RawBody, body)))
    assert ours.build(body=kopf.Body(cast(kopf.RawBody, body))) == expected
    assert expected["metadata"]["annotations"] == {"note": "kept"}
    # fields kopf is asked to keep of the status: kopf's way
    kept = ours.build(
        body=kopf.Body(cast(kopf.RawBody, body)), extra_fields=["status.lifecycleState"]
    )
    assert kept["status"] == {"lifecycleState": "STABLE"}
    body["status"]["probe"] = NotCopyable()
    body["metadata"]["managedFields"].append(NotCopyable())
    assert ours.build(body=kopf.Body(cast(kopf.RawBody, body))) == expected
    with pytest.raises(AssertionError, match="deep-copied"):
        kopfs.build(body=kopf.Body(cast(kopf.RawBody, body)))


def test_the_operators_client_looks_the_proxy_up_once_not_per_request(
    kube: KubeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's trust_env (a netrc and a proxy lookup on an executor thread per request)
    is off; the proxy the environment names for the API server is taken once."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")

    async def make(host: str) -> tuple[bool, str | None]:
        configuration = client.Configuration(host=host)
        api = kubeapi.client_for(configuration)
        try:
            return api.rest_client.pool_manager.trust_env, configuration.proxy
        finally:
            await api.close()

    assert asyncio.run(make("https://api.example:6443")) == (False, "http://proxy.example:3128")
    assert asyncio.run(make("https://api.internal.example:6443")) == (False, None)

    monkeypatch.delenv("HTTPS_PROXY")
    test_observing.install_crd(kube)

    async def read() -> Any:
        api = kubeapi.client_for(fixtures.client_configuration(kube))
        async with api:
            assert api.rest_client.pool_manager.trust_env is False
            return await kubeapi.get(api, "/api/v1/namespaces/default/configmaps/absent")

    assert asyncio.run(read()) is None  # it works: a 404 read as absent


def test_a_first_deployment_creates_its_children_without_reading_each_first(
    kube: KubeEmulator,
) -> None:
    """None of the children's Deployments exists: each child is POSTed at once (one
    request, not a read and a write); applying the same set again reads the two
    Deployments and writes nothing."""
    test_observing.create_streamjob(kube)
    streamjob = test_observing.read_resource(kube)
    job = test_acting.job_of(streamjob)
    mark = len(kube.requests)
    outcome = test_acting.act(kube, streamjob, actions.ApplyChildren(job, test_acting.HERE))
    assert outcome.ok, outcome.error
    first = by_resource(kube.requests[mark:])
    children = {k: n for k, n in first.items() if "secrets" not in k}
    assert children == {
        "GET deployments": 2,  # are they there? (no)
        "POST serviceaccounts": 2,
        "POST roles": 2,
        "POST rolebindings": 2,
        "POST networkpolicies": 2,
        "POST configmaps": 1,
        "POST services": 1,
        "POST deployments": 2,
    }, first
    mark = len(kube.requests)
    again = test_acting.act(kube, streamjob, actions.ApplyChildren(job, test_acting.HERE))
    assert again.ok, again.error
    assert by_resource(kube.requests[mark:]) == {"GET deployments": 2}
