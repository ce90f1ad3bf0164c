"""Acting against the Kubernetes emulator and a fake JobManager: children, status, Events,
REST calls and their recorded results, savepoint disposal, and stopping at the first failure."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import pytest

from streamjob_operator.acting import actor, children, savepoints
from streamjob_operator.api import models
from streamjob_operator.desired import children as desired_children
from streamjob_operator.desired import target
from streamjob_operator.observing import resource
from streamjob_operator.planning import actions, observed, planner
from streamjob_runtime.api import models as rest
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_observing
from tests.operator.test_observing import NAMESPACE, SPEC, FakeJobManager

kube = fixtures.kube
fake_jobmanager = test_observing.fake_jobmanager

HERE = target.DeploymentTarget()
NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
GROUP_VERSION = f"{models.GROUP}/{models.VERSION}"


@pytest.fixture
def streamjob(kube: KubeEmulator) -> resource.StreamJobResource:
    test_observing.create_streamjob(kube)
    return test_observing.read_resource(kube)


def job_of(
    streamjob: resource.StreamJobResource, spec: dict[str, Any] | None = None
) -> target.StreamJob:
    return streamjob.identity(models.StreamJobSpec.model_validate(spec or SPEC))


def act(
    kube: KubeEmulator,
    streamjob: resource.StreamJobResource,
    *steps: actions.Action,
    status: models.StreamJobStatus | None = None,
    settings: actor.Settings | None = None,
) -> actor.Outcome:
    plan = actions.Plan(tuple(steps), status or streamjob.status)

    async def main() -> actor.Outcome:
        async with fixtures.api_client(kube) as api:
            return await actor.Actor(api, settings, clock=lambda: NOW).act(streamjob, plan)

    return asyncio.run(main())


def stored_status(kube: KubeEmulator) -> models.StreamJobStatus:
    return test_observing.read_resource(kube).status


def writes(kube: KubeEmulator, since: int) -> list[str]:
    return [f"{r.method} {r.path}" for r in kube.requests[since:] if r.method != "GET"]


# -- children -------------------------------------------------------------------------------


def test_applying_children_creates_every_child_owned_by_the_streamjob(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    job = job_of(streamjob)
    outcome = act(kube, streamjob, actions.ApplyChildren(job, HERE))
    assert outcome.ok, outcome.error
    manifests = desired_children.children(job, HERE)
    assert len(manifests) == 12
    for manifest in manifests:
        meta = manifest["metadata"]
        stored = kube.get(manifest["apiVersion"], manifest["kind"], meta["name"], NAMESPACE)
        assert stored is not None, f"{manifest['kind']} {meta['name']} was not created"
        (owner,) = stored["metadata"]["ownerReferences"]
        assert owner["uid"] == streamjob.uid
        assert owner["kind"] == "StreamJob"
        assert owner["controller"] is True
        assert children.covers(stored, manifest)


def test_applying_again_writes_nothing_and_a_new_image_replaces_only_the_deployments(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE)).ok
    before = len(kube.requests)
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE)).ok
    assert writes(kube, before) == []
    before = len(kube.requests)
    upgraded = job_of(streamjob, {**SPEC, "image": "streamjob:2"})
    assert act(kube, streamjob, actions.ApplyChildren(upgraded, HERE)).ok
    assert sorted(writes(kube, before)) == [
        "PUT /apis/apps/v1/namespaces/default/deployments/wordcount-jobmanager",
        "PUT /apis/apps/v1/namespaces/default/deployments/wordcount-taskmanager",
    ]
    stored = kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE)
    assert stored is not None
    assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "streamjob:2"


def test_a_field_removed_from_the_manifest_is_removed_from_the_object(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    labelled = {**SPEC, "jobManager": {"podTemplate": {"metadata": {"labels": {"team": "a"}}}}}
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob, labelled), HERE)).ok
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE)).ok
    stored = kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE)
    assert stored is not None
    assert "team" not in stored["spec"]["template"]["metadata"]["labels"]


def test_a_replaced_service_keeps_its_cluster_ip(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE)).ok
    before = kube.get("v1", "services", "wordcount-jobmanager", NAMESPACE)
    assert before is not None
    with_ha = {**SPEC, "highAvailability": {"enabled": True}}
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob, with_ha), HERE)).ok
    after = kube.get("v1", "services", "wordcount-jobmanager", NAMESPACE)
    assert after is not None
    assert after["spec"]["selector"]["streamjob.dev/jobmanager-leader"] == "true"
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]


def test_an_object_controlled_by_something_else_is_not_replaced_and_the_plan_stops(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    someone = kube.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "someone"}}
    )
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "wordcount-config",
                "namespace": NAMESPACE,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "someone",
                        "uid": someone["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "data": {"theirs": "yes"},
        }
    )
    event = actions.RecordEvent(actions.EventType.NORMAL, "After", "not reached")
    outcome = act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE), event)
    assert not outcome.ok
    assert isinstance(outcome.failed, actions.ApplyChildren)
    assert outcome.error is not None
    assert "controlled by ConfigMap someone" in outcome.error
    stored = kube.get("v1", "configmaps", "wordcount-config", NAMESPACE)
    assert stored is not None
    assert stored["data"] == {"theirs": "yes"}
    assert kube.events_for("wordcount", reason="After") == []


def test_deleting_deployments_and_ha_metadata_that_are_gone_is_done(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    deletes = (
        actions.DeleteTaskManager(HERE),
        actions.DeleteJobManager(HERE),
        actions.DeleteHaMetadata(HERE),
    )
    outcome = act(kube, streamjob, *deletes)
    assert outcome.ok, outcome.error
    assert act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE)).ok
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "streamjob-wordcount-ha", "namespace": NAMESPACE},
        }
    )
    kube.create(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "streamjob-wordcount-leader", "namespace": NAMESPACE},
            "spec": {"holderIdentity": "a-crashed-jobmanager", "leaseDurationSeconds": 15},
        }
    )
    outcome = act(kube, streamjob, *deletes)
    assert outcome.ok, outcome.error
    assert kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE) is None
    assert kube.get("apps/v1", "deployments", "wordcount-taskmanager", NAMESPACE) is None
    assert kube.get("v1", "configmaps", "streamjob-wordcount-ha", NAMESPACE) is None
    lease = kube.get("coordination.k8s.io/v1", "leases", "streamjob-wordcount-leader", NAMESPACE)
    assert lease is None
    ha_deletes = [r.path.rsplit("/", 2)[-2] for r in kube.requests if r.method == "DELETE"]
    assert ha_deletes[-2:] == ["configmaps", "leases"]  # the epoch record first
    assert kube.get("v1", "services", "wordcount-jobmanager", NAMESPACE) is not None
    deleted = [r for r in kube.requests if r.method == "DELETE" and "deployments" in r.path]
    assert all("propagationPolicy=Foreground" in r.query for r in deleted)


# -- status ---------------------------------------------------------------------------------


def test_status_is_merge_patched_and_fields_it_clears_go(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    first = models.StreamJobStatus(error="broken", job=models.JobInfo(id="j1", state="RUNNING"))
    assert act(kube, streamjob, actions.WriteStatus(first), status=first).ok
    assert stored_status(kube).error == "broken"
    cleared = models.StreamJobStatus(job=models.JobInfo(id="j1", state="RUNNING"))
    outcome = act(kube, test_observing.read_resource(kube), status=cleared)
    assert outcome.ok
    assert outcome.recorded
    stored = kube.get(GROUP_VERSION, models.PLURAL, "wordcount", NAMESPACE)
    assert stored is not None
    assert "error" not in stored["status"]
    assert stored["status"]["job"]["id"] == "j1"
    # the spec as created, with the CRD's defaults the API server filled in
    assert models.StreamJobSpec.model_validate(stored["spec"]) == (
        models.StreamJobSpec.model_validate(SPEC)
    )


def test_a_status_write_from_a_stale_read_conflicts_and_stops_the_plan(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    kube.patch(
        GROUP_VERSION,
        models.PLURAL,
        "wordcount",
        {"status": {"error": "written by someone else"}},
        namespace=NAMESPACE,
        subresource="status",
    )
    outcome = act(
        kube,
        streamjob,  # read before that write
        actions.WriteStatus(models.StreamJobStatus(error="mine")),
        actions.DeleteJobManager(HERE),
    )
    assert outcome.conflict
    assert isinstance(outcome.failed, actions.WriteStatus)
    assert outcome.taken == []
    assert stored_status(kube).error == "written by someone else"


def test_an_unchanged_status_is_not_written(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    before = len(kube.requests)
    outcome = act(kube, streamjob, actions.WriteStatus(streamjob.status))
    assert outcome.ok
    assert writes(kube, before) == []


# -- Events ---------------------------------------------------------------------------------


def test_events_are_recorded_on_the_streamjob(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    long = "x" * 5000
    outcome = act(
        kube,
        streamjob,
        actions.RecordEvent(actions.EventType.NORMAL, "Deploying", "first deployment"),
        actions.RecordEvent(actions.EventType.WARNING, "InvalidSpec", long),
    )
    assert outcome.ok
    deploying, invalid = kube.events_for("wordcount", NAMESPACE, kind="StreamJob")
    assert deploying["reason"] == "Deploying"
    assert deploying["type"] == "Normal"
    assert deploying["message"] == "first deployment"
    assert deploying["involvedObject"]["uid"] == streamjob.uid
    assert deploying["involvedObject"]["apiVersion"] == GROUP_VERSION
    assert deploying["source"]["component"] == "streamjob-operator"
    assert invalid["type"] == "Warning"
    assert len(invalid["message"]) == 1024


def test_an_event_that_cannot_be_posted_does_not_stop_the_plan(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    kube.inject_error(500, method="POST", path_contains="/events")
    outcome = act(
        kube,
        streamjob,
        actions.RecordEvent(actions.EventType.NORMAL, "Lost", "not posted"),
        actions.ApplyChildren(job_of(streamjob), HERE),
    )
    assert outcome.ok, outcome.error
    assert kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE) is not None


# -- the JobManager -------------------------------------------------------------------------


TRIGGER_ID = "5" * 32


def pending(job_id: str, kind: str = "upgrade") -> models.StreamJobStatus:
    return models.StreamJobStatus(
        job=models.JobInfo(id=job_id, state="RUNNING"),
        pendingSavepoint=models.PendingSavepoint(
            triggerId=TRIGGER_ID, triggerType=kind, triggerTime="2026-03-01T12:00:00Z", jobId=job_id
        ),
    )


def rest_settings(jm: FakeJobManager) -> actor.Settings:
    return actor.Settings(resolve=jm.resolve, rest_timeout_s=5)


def savepoint_request(jid: str, stop: bool) -> actions.Action:
    kind = actions.SavepointKind.UPGRADE
    if stop:
        return actions.StopWithSavepoint(jid, kind, "/savepoints", TRIGGER_ID)
    return actions.TriggerSavepoint(jid, kind, "/savepoints", TRIGGER_ID)


@pytest.mark.parametrize("stop", [True, False])
def test_a_savepoint_request_carries_the_trigger_id_in_status_and_a_repeat_starts_nothing(
    kube: KubeEmulator,
    streamjob: resource.StreamJobResource,
    fake_jobmanager: FakeJobManager,
    stop: bool,
) -> None:
    jid = fake_jobmanager.add_job()
    fake_jobmanager.hold_savepoints = True
    status = pending(jid)
    kube.inject_error(500, method="DELETE", path_contains="deployments")
    outcome = act(
        kube,
        streamjob,
        actions.WriteStatus(status),
        savepoint_request(jid, stop),
        actions.DeleteJobManager(HERE),
        status=status,
        settings=rest_settings(fake_jobmanager),
    )
    assert isinstance(outcome.failed, actions.DeleteJobManager)
    recorded = stored_status(kube).pendingSavepoint
    assert recorded is not None
    assert recorded.triggerId == TRIGGER_ID
    assert list(fake_jobmanager.savepoints) == [TRIGGER_ID]
    post = f"POST /jobs/{jid}/{'stop' if stop else 'savepoints'}"
    assert fake_jobmanager.requests.count(post) == 1

    # the next pass sends it again (the operator could not know it arrived): same request
    streamjob = test_observing.read_resource(kube)
    outcome = act(
        kube, streamjob, savepoint_request(jid, stop), status=status,
        settings=rest_settings(fake_jobmanager),
    )  # fmt: skip
    assert outcome.ok, outcome.error
    assert fake_jobmanager.requests.count(post) == 2
    assert list(fake_jobmanager.savepoints) == [TRIGGER_ID]


def test_a_jobmanager_that_ignores_the_trigger_id_fails_the_request_and_says_why(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, fake_jobmanager: FakeJobManager
) -> None:
    jid = fake_jobmanager.add_job()
    fake_jobmanager.hold_savepoints = True
    fake_jobmanager.ignore_trigger_ids = True
    status = pending(jid)
    outcome = act(
        kube,
        streamjob,
        actions.WriteStatus(status),
        savepoint_request(jid, stop=True),
        status=status,
        settings=rest_settings(fake_jobmanager),
    )
    assert isinstance(outcome.failed, actions.StopWithSavepoint)
    (request_id,) = fake_jobmanager.savepoints
    assert outcome.error == (
        f"StopWithSavepoint failed: RuntimeError: the JobManager answered the savepoint request"
        f" {TRIGGER_ID} with request id {request_id}: it ignores client-chosen trigger ids (a"
        " JobManager older than the operator?); run a JobManager image of the operator's version"
    )


def test_a_submitted_job_id_is_recorded_and_kept_by_the_plans_status(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, fake_jobmanager: FakeJobManager
) -> None:
    submission = rest.JobSubmission(entrypoint="examples.wordcount", savepoint_path="/sp/1")
    final = models.StreamJobStatus(error="planned without the id")
    outcome = act(
        kube,
        streamjob,
        actions.WriteStatus(models.StreamJobStatus()),
        actions.SubmitJob(submission),
        status=final,
        settings=rest_settings(fake_jobmanager),
    )
    assert outcome.ok, outcome.error
    (jid,) = fake_jobmanager.jobs
    assert fake_jobmanager.submissions == [submission]
    stored = stored_status(kube)
    assert stored.job.id == jid
    assert stored.error == "planned without the id"


def test_cancelling_a_job_that_ended_or_is_unknown_is_done(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, fake_jobmanager: FakeJobManager
) -> None:
    ended = fake_jobmanager.add_job(rest.JobStatus.FINISHED)
    running = fake_jobmanager.add_job()
    outcome = act(
        kube,
        streamjob,
        actions.CancelJob(ended),
        actions.CancelJob("unknown"),
        actions.CancelJob(running),
        settings=rest_settings(fake_jobmanager),
    )
    assert outcome.ok, outcome.error
    assert fake_jobmanager.jobs[running].state is rest.JobStatus.CANCELED


def test_an_unreachable_jobmanager_fails_the_action_and_the_plans_status_is_not_recorded(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, fake_jobmanager: FakeJobManager
) -> None:
    fake_jobmanager.available = False
    outcome = act(
        kube,
        streamjob,
        actions.CancelJob("j1"),
        actions.RequeueAfter(5),
        status=models.StreamJobStatus(error="after the cancel"),
        settings=rest_settings(fake_jobmanager),
    )
    assert isinstance(outcome.failed, actions.CancelJob)
    assert outcome.error is not None
    assert "503" in outcome.error
    assert not outcome.recorded
    assert outcome.requeue_after is None
    assert stored_status(kube).error is None


# -- savepoint disposal ---------------------------------------------------------------------


def make_savepoint(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "_metadata").write_bytes(b"meta")
    (directory / "op-0").write_bytes(b"state")
    return directory


def test_savepoints_under_a_mounted_volume_are_deleted_others_are_reported_once(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, tmp_path: Path
) -> None:
    mounted = tmp_path / "savepoints"
    disposable = make_savepoint(mounted, "savepoint-a")
    elsewhere = make_savepoint(tmp_path / "other", "savepoint-b")
    not_a_savepoint = mounted / "notes"
    not_a_savepoint.mkdir()
    gone = mounted / "savepoint-gone"
    settings = actor.Settings(savepoint_mounts=(mounted,))
    locations = [str(disposable), str(elsewhere), str(not_a_savepoint), str(gone), "s3://b/sp"]
    disposals = [actions.DisposeSavepoint(loc) for loc in locations]

    async def main() -> tuple[actor.Outcome, actor.Outcome]:
        async with fixtures.api_client(kube) as api:
            acting = actor.Actor(api, settings, clock=lambda: NOW)
            plan = actions.Plan(tuple(disposals), streamjob.status)
            first = await acting.act(streamjob, plan)
            return first, await acting.act(streamjob, plan)

    first, again = asyncio.run(main())
    assert first.ok, first.error
    assert first.disposed == locations
    assert again.disposed == locations
    assert not disposable.exists()
    assert elsewhere.exists()
    assert not_a_savepoint.exists()
    reported = kube.events_for("wordcount", reason="SavepointNotDisposed")
    assert sorted(e["message"].split()[3] for e in reported) == sorted(
        [str(elsewhere), str(not_a_savepoint), "s3://b/sp"]
    )


def test_dispose_never_deletes_the_mount_itself_or_escapes_it(tmp_path: Path) -> None:
    mounted = tmp_path / "savepoints"
    make_savepoint(tmp_path, "outside")
    mounted.mkdir()
    (mounted / "_metadata").write_bytes(b"x")
    mounts = (mounted,)
    assert savepoints.dispose(str(mounted), mounts) is savepoints.Disposal.NOT_MOUNTED
    escaping = f"{mounted}/../outside"
    assert savepoints.dispose(escaping, mounts) is savepoints.Disposal.NOT_MOUNTED
    assert (tmp_path / "outside").exists()
    assert savepoints.dispose("relative/path", mounts) is savepoints.Disposal.NOT_MOUNTED
    inside = make_savepoint(mounted, "savepoint-c")
    assert savepoints.dispose(f"file://{inside}/_metadata", mounts).freed
    assert not inside.exists()


def test_an_s3_savepoint_the_operator_cannot_dispose_of_is_explained_with_the_cli_command() -> None:
    location = "s3://bucket/savepoints/savepoint-1a2b3c-0123456789ab"
    result = savepoints.dispose(location, (Path("/state"),), ("s3://bucket/other",))
    assert result is savepoints.Disposal.NOT_MOUNTED
    message = savepoints.explain(location, result)
    assert "not under an S3 root the operator may delete under" in message
    assert "--savepoint-bucket" in message
    assert f"streamjob savepoint --dispose {location}" in message
    assert "--savepoint-volume" not in message


# -- a planned pass -------------------------------------------------------------------------


def test_a_first_deployment_plan_applies_children_and_records_the_write_ahead_status(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    seen = observed.Observed(meta=streamjob.meta)
    plan = planner.plan(seen, streamjob.spec, streamjob.status, NOW)
    outcome = act(kube, streamjob, *plan.actions, status=plan.status)
    assert outcome.ok, outcome.error
    assert outcome.requeue_after is not None
    stored = stored_status(kube)
    assert stored.reconciliation.step == "apply-children"
    assert stored.reconciliation.lastReconciledSpec is not None
    assert stored.lifecycleState is models.LifecycleState.CREATED
    assert kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE) is not None
    assert [e["reason"] for e in kube.events_for("wordcount")] == ["Deploying"]
