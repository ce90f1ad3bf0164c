"""The test kubelet (tests.kube.pods): Deployments rendered by the operator's builders, run
as real JobManager and TaskManager processes against the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
import datetime
import signal
import tempfile
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streamjob_operator.api import crd, models
from streamjob_operator.desired import (
    ha,
    jobmanager,
    metadata,
    submission,
    target,
    taskmanager,
)
from streamjob_operator.desired import security as desired_security
from streamjob_operator.observing import children
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.planning import observed
from streamjob_runtime import security
from streamjob_runtime.api import certificates as runtime_certificates
from streamjob_runtime.api import client
from streamjob_runtime.api import models as rest
from tests.integration.test_exactly_once_recovery import args, assert_exact
from tests.kube.pods import (
    FINALIZER,
    HASH_LABEL,
    RUNTIME_ROOT,
    PodRunner,
    expand,
    rewrite_flags,
    service_of_host,
    streamjob_command,
)
from tests.kube.server import KubeEmulator

T = TypeVar("T")
JOBS = Path(__file__).parent.parent / "jobs"
NAMESPACE = "default"
HERE = target.DeploymentTarget()
READY = observed.DeploymentState.READY


@pytest.fixture
def runner(kube: KubeEmulator, tmp_path: Path) -> Iterator[PodRunner]:
    with PodRunner(kube, tmp_path / "pods", namespace=NAMESPACE) as r:
        yield r


# -- helpers ------------------------------------------------------------------------------------


def spec(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": "streamjob:test",
        "job": {
            "entrypoint": str(JOBS / "keyed_sum.py"),
            "args": args(tmp_path / "out"),
            "parallelism": 2,
        },
        "taskManager": {"replicas": 1, "slots": 2, "resources": {"cpu": "1", "memory": "1Gi"}},
        "checkpointing": {"storage": str(tmp_path / "checkpoints"), "interval": "200ms"},
        "savepoints": {"directory": str(tmp_path / "savepoints")},
    }
    body.update(overrides)
    return body


def create_streamjob(kube: KubeEmulator, name: str, body: dict[str, Any]) -> target.StreamJob:
    """A StreamJob in the emulator (so its children's owner reference holds), as the
    builders see it."""
    kube.apply_crd(crd.build())
    created = kube.create(
        {
            "apiVersion": f"{models.GROUP}/{models.VERSION}",
            "kind": models.KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": body,
        }
    )
    return target.StreamJob(
        name, NAMESPACE, created["metadata"]["uid"], models.StreamJobSpec.model_validate(body)
    )


def create_credentials(kube: KubeEmulator, job: target.StreamJob) -> None:
    """The job's CA, certificate and REST token Secrets, as acting.credentials makes them."""
    now = datetime.datetime.now(datetime.UTC)
    ca = runtime_certificates.make_ca("test CA", now)
    names, addresses = desired_security.dns_names(job), desired_security.IP_ADDRESSES
    pair = runtime_certificates.issue(ca, "test", names, addresses, now)
    kube.create(
        desired_security.ca_secret(
            job, {desired_security.CA_CERT: ca.cert, desired_security.CA_KEY: ca.key}
        )
    )
    kube.create(desired_security.tls_secret(job, ca.cert, pair.cert, pair.key))
    kube.create(desired_security.token_secret(job, "a-test-token"))


def credentials_of(kube: KubeEmulator, job: target.StreamJob) -> rest_observing.Credentials:
    tls = desired_security.secret_data(
        kube.get("v1", "secrets", desired_security.tls_secret_name(job), NAMESPACE)
    )
    token = desired_security.secret_data(
        kube.get("v1", "secrets", desired_security.token_secret_name(job), NAMESPACE)
    )
    return rest_observing.Credentials(
        token[desired_security.TOKEN_KEY].decode(), tls[desired_security.CA_CERT]
    )


def deploy(kube: KubeEmulator, job: target.StreamJob) -> None:
    """What acting applies for the pods: the job's Secrets, the Service and both
    Deployments."""
    if kube.get("v1", "secrets", desired_security.tls_secret_name(job), NAMESPACE) is None:
        create_credentials(kube, job)
    kube.create(jobmanager.service(job, HERE))
    kube.create(jobmanager.deployment(job, HERE))
    kube.create(taskmanager.deployment(job, HERE))


def jm_name(job: target.StreamJob) -> str:
    return metadata.name(job, HERE, metadata.Component.JOBMANAGER)


def tm_name(job: target.StreamJob) -> str:
    return metadata.name(job, HERE, metadata.Component.TASKMANAGER)


def deployment(kube: KubeEmulator, name: str) -> dict[str, Any] | None:
    return kube.get("apps/v1", "deployments", name, NAMESPACE)


def wait(
    kube: KubeEmulator,
    runner: PodRunner,
    condition: Callable[[], T],
    what: str,
    timeout: float = 60.0,
) -> T:
    try:
        return kube.wait_for(condition, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{runner.logs()[-8000:]}") from None


def wait_ready(kube: KubeEmulator, runner: PodRunner, *names: str) -> None:
    for name in names:
        wait(
            kube,
            runner,
            lambda n=name: children.deployment_state(deployment(kube, n)) is READY,  # type: ignore[misc]
            f"Deployment {name} to be ready",
        )


def rest_call(
    runner: PodRunner, url: str, call: Callable[[client.JobManagerClient], Awaitable[T]]
) -> T:
    """``call`` on a client of ``url`` with the job's token and CAs."""

    async def go() -> T:
        async with client.JobManagerClient(url, **runner.client_options(url)) as c:
            return await call(c)

    return asyncio.run(go())


def run_job(runner: PodRunner, job: target.StreamJob) -> str:
    url = runner.rest_url(jm_name(job))
    return rest_call(runner, url, lambda c: c.submit(submission.job_submission(job, HERE)))


def wait_terminal(
    kube: KubeEmulator, runner: PodRunner, job: target.StreamJob, job_id: str
) -> rest.JobDetails:
    seen: list[rest.JobDetails] = []

    def done() -> bool:
        try:
            seen.append(
                rest_call(runner, runner.rest_url(jm_name(job), timeout=1), lambda c: c.job(job_id))
            )
        except (LookupError, OSError, client.RestError):
            return False
        return seen[-1].state.terminal

    wait(kube, runner, done, f"job {job_id} to end", timeout=120)
    return seen[-1]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def pod_status(kube: KubeEmulator, name: str) -> dict[str, Any]:
    pod = kube.get("v1", "pods", name, NAMESPACE)
    assert pod is not None, f"no Pod {name}"
    status: dict[str, Any] = pod.get("status") or {}
    return status


# -- pure parts -----------------------------------------------------------------------------------


def test_expansion_is_kubernetes_own() -> None:
    env = {"POD_IP": "10.0.0.1", "A": "x"}
    assert expand("--host=$(POD_IP)", env) == "--host=10.0.0.1"
    assert expand("$(MISSING)-$(A)", env) == "$(MISSING)-x"
    assert expand("$$(A) costs $$5 $", env) == "$(A) costs $5 $"
    assert expand("$(A", env) == "$(A"


def test_the_streamjob_container_is_found_however_the_command_is_split() -> None:
    def template(*containers: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"containers": list(containers)}}

    sidecar = {"name": "sidecar", "command": ["sleep", "infinity"]}
    both = {"name": "jm", "command": ["streamjob", "jobmanager"], "args": ["--host", "h"]}
    in_args = {"name": "jm", "command": ["/usr/local/bin/streamjob"], "args": ["taskmanager"]}
    only_args = {"name": "jm", "args": ["streamjob", "jobmanager", "--rest-port", "1"]}
    found = streamjob_command(template(sidecar, both))
    assert found is not None
    assert (found.role, found.argv) == ("jobmanager", ("jobmanager", "--host", "h"))
    found = streamjob_command(template(in_args))
    assert found is not None
    assert (found.role, found.argv) == ("taskmanager", ("taskmanager",))
    found = streamjob_command(template(only_args))
    assert found is not None
    assert found.argv == ("jobmanager", "--rest-port", "1")
    assert streamjob_command(template(sidecar)) is None
    assert streamjob_command(template({"name": "x", "command": ["streamjob", "run"]})) is None


def test_flags_are_rewritten_in_both_spellings() -> None:
    argv = ["taskmanager", "--data-port", "6121", "--jobmanager=svc.ns.svc:6123", "--data-port"]
    assert rewrite_flags(argv, ("--data-port", "--jobmanager"), str.upper) == [
        "taskmanager", "--data-port", "6121", "--jobmanager=SVC.NS.SVC:6123", "--data-port",
    ]  # fmt: skip
    assert service_of_host("a-jobmanager.ns.svc", "x") == ("ns", "a-jobmanager")
    assert service_of_host("a.ns.svc.cluster.local", "x") == ("ns", "a")
    assert service_of_host("a.ns", "x") == ("ns", "a")
    assert service_of_host("127.0.0.1", "x") is None
    assert service_of_host("a", "x") is None


def test_urls_not_naming_a_service_are_left_alone_and_a_service_without_pods_refuses(
    kube: KubeEmulator, runner: PodRunner
) -> None:
    assert runner.resolve("http://example.com:8081/jobs") == "http://example.com:8081/jobs"
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "nobody", "namespace": NAMESPACE},
            "spec": {"selector": {"app": "nobody"}, "ports": [{"name": "rest", "port": 8081}]},
        }
    )
    url = runner.resolve("http://nobody.default.svc:8081/overview?x=1")
    assert url.startswith(runner.dead_url)
    assert url.endswith("/overview?x=1")
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(url, timeout=5)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    with pytest.raises(LookupError):
        runner.rest_url("nobody", timeout=0.2)


# -- real processes ---------------------------------------------------------------------------


def test_a_rendered_cluster_runs_a_job_to_its_exact_output(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    job = create_streamjob(kube, "sum", spec(tmp_path))
    deploy(kube, job)
    wait_ready(kube, runner, jm_name(job), tm_name(job))

    # The Deployments' status, as the Deployment controller reports it.
    status = (deployment(kube, jm_name(job)) or {})["status"]
    assert status["observedGeneration"] == 1
    assert (status["replicas"], status["readyReplicas"], status["updatedReplicas"]) == (1, 1, 1)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Available": "True",
        "Progressing": "True",
    }

    # A Pod object per process, labelled like the template, owned by the Deployment.
    [jm] = runner.processes(jm_name(job))
    [tm] = runner.processes(tm_name(job))
    assert jm.pid is not None
    assert tm.pid is not None
    pod = kube.get("v1", "pods", jm.name, NAMESPACE)
    assert pod is not None
    assert jm.name.startswith(f"{jm_name(job)}-{pod['metadata']['labels'][HASH_LABEL]}-")
    selector = metadata.selector_labels(job, HERE, metadata.Component.JOBMANAGER)
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert pod["metadata"]["finalizers"] == [FINALIZER]
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"] == "127.0.0.1"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"

    # The downward API, the kubeconfig, $(VAR) expansion and the local ports.
    env = environ(jm.pid)
    assert (env["POD_NAME"], env["POD_NAMESPACE"], env["POD_IP"]) == (
        jm.name,
        NAMESPACE,
        "127.0.0.1",
    )
    assert env["KUBECONFIG"] == str(runner.kubeconfig)
    assert env["HOME"] == "/tmp"
    assert "KUBERNETES_SERVICE_HOST" not in env
    rest_port = jm.ports[jobmanager.REST_PORT]
    assert [jm.argv[3], *jm.argv[4:12]] == [
        "jobmanager", "--host", "127.0.0.1", "--bind-host", "0.0.0.0",
        "--rpc-port", str(jm.ports[jobmanager.RPC_PORT]), "--rest-port", str(rest_port),
    ]  # fmt: skip
    assert environ(tm.pid)["POD_NAME"] == tm.name
    proxy = tm.argv[tm.argv.index("--jobmanager") + 1]
    assert proxy.startswith("127.0.0.1:")
    assert proxy != f"127.0.0.1:{jm.ports[jobmanager.RPC_PORT]}"  # a Service proxy
    assert tm.argv[tm.argv.index("--data-port") + 1] == str(tm.ports[taskmanager.DATA_PORT])

    # The Service, as the operator reaches it.
    url = runner.rest_url(jm_name(job))
    assert url == f"https://127.0.0.1:{rest_port}"
    assert runner.resolve(jobmanager.rest_url(job, HERE)) == url
    assert runner.address_resolver(jobmanager.rest_url(job, HERE) + "/jobs") == f"{url}/jobs"

    overview = rest_call(runner, url, lambda c: c.overview())
    assert (overview.taskmanagers, overview.slots_total) == (1, 2)
    job_id = run_job(runner, job)
    details = wait_terminal(kube, runner, job, job_id)
    assert details.state is rest.JobStatus.FINISHED, details.failure_cause
    assert_exact(tmp_path / "out")
    assert (tmp_path / "checkpoints").is_dir()

    # The operator's observation of the JobManager, through the resolver.
    seen = asyncio.run(
        rest_observing.observe(
            runner.resolve(jobmanager.rest_url(job, HERE)),
            job_id,
            None,
            credentials=credentials_of(kube, job),
        )
    )
    assert seen.reachable
    assert seen.job is not None
    assert seen.job.state is rest.JobStatus.FINISHED
    assert runner.errors == []


def test_scaling_restarts_and_a_new_template_are_carried_out(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    job = create_streamjob(kube, "scale", spec(tmp_path))
    deploy(kube, job)
    wait_ready(kube, runner, jm_name(job), tm_name(job))
    url = runner.rest_url(jm_name(job))

    # Up: a second TaskManager registers.
    kube.patch("apps/v1", "deployments", tm_name(job), {"spec": {"replicas": 2}}, NAMESPACE)
    wait_ready(kube, runner, tm_name(job))
    assert len(runner.processes(tm_name(job))) == 2
    assert rest_call(runner, url, lambda c: c.overview()).taskmanagers == 2

    # A killed process is restarted in the same pod, and counted.
    first, second = runner.processes(tm_name(job))
    assert first.pid is not None
    assert runner.kill(first.name) == first.pid

    def restarted() -> bool:
        [now] = [p for p in runner.processes(tm_name(job)) if p.name == first.name]
        statuses = pod_status(kube, first.name).get("containerStatuses") or [{}]
        return now.ready and now.pid != first.pid and statuses[0].get("restartCount") == 1

    wait(kube, runner, restarted, "the killed TaskManager to be restarted")
    last = pod_status(kube, first.name)["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == -signal.SIGKILL
    wait_ready(kube, runner, tm_name(job))

    # Down: the newest pod goes, process and Pod object.
    kube.patch("apps/v1", "deployments", tm_name(job), {"spec": {"replicas": 1}}, NAMESPACE)
    wait(
        kube,
        runner,
        lambda: [p.name for p in runner.processes(tm_name(job))] == [first.name],
        "the TaskManager Deployment to scale down",
    )
    assert second.pid is not None
    assert not pid_exists(second.pid)
    assert kube.get("v1", "pods", second.name, NAMESPACE) is None
    wait_ready(kube, runner, tm_name(job))
    wait(
        kube,
        runner,
        lambda: rest_call(runner, url, lambda c: c.overview()).taskmanagers == 1,
        "the JobManager to lose the TaskManager",
    )

    # A new template (one slot more per TaskManager): every old pod is gone before a new
    # one is created.
    old_hash = runner.processes(tm_name(job))[0].template_hash
    more_slots = spec(tmp_path, taskManager={"replicas": 1, "slots": 3})
    changed = target.StreamJob(
        job.name, job.namespace, job.uid, models.StreamJobSpec.model_validate(more_slots)
    )
    template = taskmanager.deployment(changed, HERE)["spec"]["template"]
    kube.patch("apps/v1", "deployments", tm_name(job), {"spec": {"template": template}}, NAMESPACE)
    wait(
        kube,
        runner,
        lambda: (
            (deployment(kube, tm_name(job)) or {}).get("status", {}).get("observedGeneration") == 4
        ),
        "the new generation to be observed",
    )
    wait_ready(kube, runner, tm_name(job))
    [new] = runner.processes(tm_name(job))
    assert new.template_hash != old_hash
    assert new.argv[new.argv.index("--slots") + 1] == "3"
    history = runner.history()
    old_gone = max(e.at for e in history if e.template_hash == old_hash and e.what == "deleted")
    new_created = min(e.at for e in history if e.template_hash == new.template_hash)
    assert old_gone < new_created
    wait(
        kube,
        runner,
        lambda: rest_call(runner, url, lambda c: c.overview()).slots_total == 3,
        "the new TaskManager to register",
    )


def test_deleting_deployments_stops_their_processes(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    job = create_streamjob(kube, "gone", spec(tmp_path))
    deploy(kube, job)
    wait_ready(kube, runner, jm_name(job), tm_name(job))
    [jm] = runner.processes(jm_name(job))
    [tm] = runner.processes(tm_name(job))
    assert jm.pid is not None
    assert tm.pid is not None

    # Foreground, as acting deletes: the Deployment lasts until its pods are gone, and
    # those until their process has exited.
    assert kube.delete("apps/v1", "deployments", jm_name(job), NAMESPACE, "Foreground") is False
    wait(kube, runner, lambda: deployment(kube, jm_name(job)) is None, "the JobManager to go")
    assert not pid_exists(jm.pid)
    assert kube.get("v1", "pods", jm.name, NAMESPACE) is None
    assert runner.processes(jm_name(job)) == []
    exits = [e for e in runner.history() if e.pod == jm.name and e.what in ("exited", "deleted")]
    assert [e.what for e in exits] == ["exited", "deleted"]

    # The StreamJob's deletion reaches the TaskManagers through the garbage collector.
    kube.delete(f"{models.GROUP}/{models.VERSION}", models.PLURAL, job.name, NAMESPACE)
    wait(kube, runner, lambda: not runner.pods(), "every pod to go")
    assert deployment(kube, tm_name(job)) is None
    assert not pid_exists(tm.pid)
    assert kube.list("v1", "pods", NAMESPACE) == []


def test_with_ha_the_service_follows_the_leader_label(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    body = spec(
        tmp_path,
        jobManager={"replicas": 2},
        highAvailability={
            "enabled": True,
            "leaseDuration": "2s",
            "renewDeadline": "1500ms",
            "retryPeriod": "200ms",
        },
    )
    job = create_streamjob(kube, "ha", body)
    deploy(kube, job)
    wait_ready(kube, runner, tm_name(job))  # registered with the leader, through the HA metadata

    def leader() -> str | None:
        """The pod the leader label is on."""
        found = kube.list(
            "v1", "pods", NAMESPACE, f"{metadata.LEADER_LABEL}=true,{metadata.CLUSTER_LABEL}"
        )
        names = [p["metadata"]["name"] for p in found]
        return names[0] if len(names) == 1 else None

    first = wait(kube, runner, leader, "a leader to label its pod")
    # The standby is ready too (its /readyz says "standby"): the Service selects the
    # leader by its label, not by readiness.
    wait(
        kube,
        runner,
        lambda: (deployment(kube, jm_name(job)) or {})["status"].get("readyReplicas") == 2,
        "both JobManagers to be ready",
    )
    [leading] = [p for p in runner.processes(jm_name(job)) if p.name == first]
    assert leading.argv[leading.argv.index("--pod-name") + 1] == first
    assert runner.rest_url(jm_name(job)) == f"https://127.0.0.1:{leading.ports[8081]}"
    assert kube.get(
        "coordination.k8s.io/v1", "leases", ha.lease_name(metadata.cluster_id(job, HERE)), NAMESPACE
    )

    job_id = run_job(runner, job)
    url = runner.rest_url(jm_name(job))
    wait(
        kube,
        runner,
        lambda: rest_call(runner, url, lambda c: c.checkpoints(job_id)).counts.completed >= 1,
        "a checkpoint",
    )
    runner.kill(first)
    second = wait(
        kube, runner, lambda: (name := leader()) != first and name, "the standby to take over"
    )
    [standby] = [p for p in runner.processes(jm_name(job)) if p.name == second]
    assert runner.rest_url(jm_name(job)) == f"https://127.0.0.1:{standby.ports[8081]}"
    details = wait_terminal(kube, runner, job, job_id)
    assert details.state is rest.JobStatus.FINISHED, details.failure_cause
    assert_exact(tmp_path / "out")


def test_a_replaced_jobmanager_pod_is_found_again_through_the_service(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    job = create_streamjob(kube, "again", spec(tmp_path))
    deploy(kube, job)
    wait_ready(kube, runner, jm_name(job), tm_name(job))
    [old] = runner.processes(jm_name(job))
    [tm] = runner.processes(tm_name(job))
    assert old.pid is not None
    # Deleting the Pod object stops its process; the Deployment replaces the pod.
    kube.delete("v1", "pods", old.name, NAMESPACE)
    wait(
        kube,
        runner,
        lambda: [p.name for p in runner.processes(jm_name(job))] not in ([old.name], []),
        "a new JobManager pod",
    )
    wait_ready(kube, runner, jm_name(job), tm_name(job))
    assert not pid_exists(old.pid)
    [new] = runner.processes(jm_name(job))
    url = runner.rest_url(jm_name(job))
    assert url == f"https://127.0.0.1:{new.ports[jobmanager.REST_PORT]}"
    # The TaskManager, given the Service's address, reaches the new JobManager.
    wait(
        kube,
        runner,
        lambda: rest_call(runner, url, lambda c: c.overview()).taskmanagers == 1,
        "the TaskManager to register with the new JobManager",
    )
    [same] = runner.processes(tm_name(job))
    assert (same.name, same.pid, same.restarts) == (tm.name, tm.pid, 0)


def test_the_container_environment_is_computed_as_the_kubelet_does(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    kube.create({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": NAMESPACE},
        "data": {"LEVEL": "INFO", "COLOR": "blue"},
    })  # fmt: skip
    kube.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "secret", "namespace": NAMESPACE},
        "stringData": {"TOKEN": "s3cr3t"},
    })  # fmt: skip
    labels = {"app": "lonely"}
    container = {
        "name": "tm",
        "image": "streamjob:test",
        "command": ["streamjob"],
        "args": ["taskmanager", "--jobmanager", "127.0.0.1:1", "--data-port", "6121",
                 "--id", "tm-$(POD_NAME)", "--slots", "$(SLOTS)"],
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
        "env": [
            {"name": "SLOTS", "value": "3"},
            {"name": "GREETING", "value": "hello $(CM_COLOR) $$(SLOTS)"},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "LEVEL",
             "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "secret", "key": "TOKEN"}}},
        ],
    }  # fmt: skip
    kube.create({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "lonely", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    })  # fmt: skip
    # No JobManager: ready after a moment of running, without registration.
    with PodRunner(kube, tmp_path / "pods", require_registration=False, min_ready=0.2) as runner:
        wait(
            kube,
            runner,
            lambda: (deployment(kube, "lonely") or {}).get("status", {}).get("readyReplicas"),
            "the lonely TaskManager to be ready",
        )
        [tm] = runner.processes("lonely")
        assert tm.pid is not None
        env = environ(tm.pid)
        assert {k: env[k] for k in ("SLOTS", "GREETING", "POD_NAME", "APP", "TOKEN")} == {
            "SLOTS": "3",
            "GREETING": "hello blue $(SLOTS)",
            "POD_NAME": tm.name,
            "APP": "lonely",
            "TOKEN": "s3cr3t",
        }
        assert (env["CM_LEVEL"], env["CM_COLOR"], env["LEVEL"]) == ("INFO", "blue", "INFO")
        flags = list(tm.argv[tm.argv.index("taskmanager") :])
        port = tm.ports[6121]
        # The security flags the pod spec lacks come last (see tests.kube.pods); a
        # TaskManager gets no storage roots (it restores what its JobManager sends).
        assert flags == [
            "taskmanager", "--jobmanager", "127.0.0.1:1", "--data-port", str(port),
            "--id", f"tm-{tm.name}", "--slots", "3",
            "--metrics-port", str(tm.ports[9249]), "--insecure",
            "--job-roots", f"{RUNTIME_ROOT.parent}:{tempfile.gettempdir()}",
        ]  # fmt: skip
    assert not pid_exists(tm.pid)
    assert kube.list("v1", "pods", NAMESPACE) == []  # let go when the runner stops


def _secured(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """``manifest`` with what SECURITY-CONTRACT.md has the operator add: the job's TLS
    Secret and (JobManager) token Secret mounted, the flags naming them, probes on the
    plain metrics port."""
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    jobmanager_pod = container["command"][1] == "jobmanager"
    container["args"] += [
        "--tls-dir", "/etc/streamjob/tls",
        "--job-roots", "/opt/streamjob/jobs:/opt/streamjob/examples",  # the image's
    ]  # fmt: skip
    mounts = [{"name": "tls", "mountPath": "/etc/streamjob/tls", "readOnly": True}]
    volumes: list[dict[str, Any]] = [{"name": "tls", "secret": {"secretName": f"{name}-tls"}}]
    if jobmanager_pod:
        container["args"] += ["--rest-token-file", "/etc/streamjob/rest/token"]
        mounts.append({"name": "rest-token", "mountPath": "/etc/streamjob/rest", "readOnly": True})
        volumes.append({"name": "rest-token", "secret": {"secretName": f"{name}-rest-token"}})
        container["ports"].append({"name": "metrics", "containerPort": 9249, "protocol": "TCP"})
        container["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "metrics"}}
    container["volumeMounts"] = [*(container.get("volumeMounts") or []), *mounts]
    pod["volumes"] = [*(pod.get("volumes") or []), *volumes]
    return manifest


def test_pods_with_the_jobs_tls_and_token_secrets_talk_mutual_tls_and_https(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    """The contract's pod layout runs: the kubelet mounts the Secrets, the TaskManager
    registers over mutual TLS, REST is HTTPS with the token, probes use the metrics port."""
    job = create_streamjob(kube, "sum", spec(tmp_path))
    tls = security.write_credentials(tmp_path / "credentials", ["localhost"], ["127.0.0.1"])
    token = security.new_token()
    kube.create({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "sum-tls", "namespace": NAMESPACE},
        "stringData": {f: (tls / f).read_text() for f in ("ca.crt", "tls.crt", "tls.key")},
    })  # fmt: skip
    kube.create({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "sum-rest-token", "namespace": NAMESPACE},
        "stringData": {"token": token},
    })  # fmt: skip
    kube.create(jobmanager.service(job, HERE))
    kube.create(_secured(jobmanager.deployment(job, HERE), "sum"))
    kube.create(_secured(taskmanager.deployment(job, HERE), "sum"))
    wait_ready(kube, runner, jm_name(job), tm_name(job))
    url = runner.rest_url(jm_name(job))
    assert url.startswith("https://127.0.0.1:")
    [jm] = runner.processes(jm_name(job))
    assert "--insecure" not in jm.argv

    async def calls() -> tuple[int, int, rest.JobStatus]:
        async with client.JobManagerClient(url, token=token, ca_file=tls / "ca.crt") as c:
            registered = (await c.overview()).taskmanagers
            # tests/jobs is the image's job directory here (the kubelet adds it).
            job_id = await c.submit(submission.job_submission(job, HERE))
            for _ in range(1200):  # up to a minute
                if (state := (await c.job(job_id)).state) is not rest.JobStatus.CREATED:
                    break
                await asyncio.sleep(0.05)
            await c.cancel(job_id)
        async with client.JobManagerClient(url, ca_file=tls / "ca.crt") as c:
            with pytest.raises(client.RestError) as refused:
                await c.overview()
        return registered, refused.value.status, state

    assert asyncio.run(calls()) == (1, 401, rest.JobStatus.RUNNING)
    assert '"tls":true' in runner.logs()
