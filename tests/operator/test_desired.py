"""The desired children of a StreamJob: exact flags, selectors, merges, names, RBAC, submission."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from streamjob_operator.api import models
from streamjob_operator.desired import (
    children,
    ha,
    jobmanager,
    metadata,
    podtemplate,
    rbac,
    submission,
    target,
    taskmanager,
)
from streamjob_runtime import cli, config
from streamjob_runtime.ha import lease, services

DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
HERE = target.DeploymentTarget()
JM = metadata.Component.JOBMANAGER
TM = metadata.Component.TASKMANAGER
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


Builder = Callable[[target.StreamJob, target.DeploymentTarget], dict[str, Any]]


def make_spec(**fields: Any) -> models.StreamJobSpec:
    raw: dict[str, Any] = {"image": "streamjob:1", "job": {"entrypoint": "examples.clickstream"}}
    raw.update(fields)
    return models.StreamJobSpec.model_validate(raw)


def make_job(name: str = "wordcount", **fields: Any) -> target.StreamJob:
    return target.StreamJob(name, "prod", "6a1f-uid", make_spec(**fields))


HA_ON: dict[str, Any] = {"highAvailability": {"enabled": True}}
PVC_TEMPLATE: dict[str, Any] = {
    "spec": {
        "containers": [
            {"name": "jobmanager", "volumeMounts": [{"name": "state", "mountPath": "/state"}]}
        ],
        "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}],
    }
}


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    assert len(found) == 1
    return found[0]


def expand(args: list[str]) -> list[str]:
    """What the kubelet makes of $(VAR) references, for the runtime's own parser."""
    values = {ha.POD_IP: "10.0.0.7", ha.POD_NAME: "wordcount-jm-0", ha.POD_NAMESPACE: "prod"}
    return [values.get(a, a) for a in args]


# -- the JobManager and TaskManager command lines ------------------------------------------


def test_jobmanager_flags_without_ha_are_exact() -> None:
    job = make_job(savepoints={"directory": "/state/savepoints"})
    assert jobmanager.arguments(job, HERE) == [
        "--host", "$(POD_IP)",
        "--bind-host", "0.0.0.0",
        "--rpc-port", "6123",
        "--rest-port", "8081",
        "--checkpoint-dir", "/checkpoints",
        "--savepoint-dir", "/state/savepoints",
        "--tls-dir", "/etc/streamjob/tls",
        "--rest-token-file", "/etc/streamjob/rest/token",
        "--metrics-port", "9249",
    ]  # fmt: skip
    assert container(jobmanager.deployment(job, HERE), "jobmanager")["command"] == [
        "streamjob",
        "jobmanager",
    ]


def test_a_job_started_from_a_savepoint_elsewhere_may_restore_from_its_directory() -> None:
    job = make_job(
        savepoints={"directory": "/state/savepoints"},
        job={"entrypoint": "examples.clickstream", "initialSavepointPath": "/imported/sp-1a2b/"},
    )
    args = jobmanager.arguments(job, HERE)
    roots = args[args.index("--storage-roots") + 1]
    assert roots == "/checkpoints:/state/savepoints:/imported"
    assert "--storage-roots" not in jobmanager.arguments(make_job(), HERE)


def test_jobmanager_flags_with_ha_carry_the_timings_in_ms() -> None:
    job = make_job(
        checkpointing={"storage": "/state/checkpoints"},
        highAvailability={
            "enabled": True, "leaseDuration": "1m", "renewDeadline": "30s", "retryPeriod": "500ms",
        },
    )  # fmt: skip
    assert jobmanager.arguments(job, HERE) == [
        "--host", "$(POD_IP)",
        "--bind-host", "0.0.0.0",
        "--rpc-port", "6123",
        "--rest-port", "8081",
        "--checkpoint-dir", "/state/checkpoints",
        "--tls-dir", "/etc/streamjob/tls",
        "--rest-token-file", "/etc/streamjob/rest/token",
        "--metrics-port", "9249",
        "--ha", "kubernetes",
        "--ha-cluster-id", "wordcount",
        "--ha-namespace", "$(POD_NAMESPACE)",
        "--ha-lease-duration", "60000",
        "--ha-renew-deadline", "30000",
        "--ha-retry-period", "500",
        "--pod-name", "$(POD_NAME)",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "ha_on"),
    [
        ({}, False),
        ({"highAvailability": {"enabled": False}}, False),
        (HA_ON, True),
        ({"highAvailability": {"enabled": True}, "jobManager": {"replicas": 3}}, True),
        # refused by the CRD's CEL rule, but the builders still never run two leaders
        ({"jobManager": {"replicas": 2}}, True),
    ],
)
def test_ha_flags_appear_iff_ha_is_on(fields: dict[str, Any], ha_on: bool) -> None:
    job = make_job(**fields)
    jm_args = jobmanager.arguments(job, HERE)
    tm_args = taskmanager.arguments(job, HERE)
    assert ha.enabled(job.spec) is ha_on
    assert ("--ha" in jm_args) is ha_on
    assert ("--pod-name" in jm_args) is ha_on
    assert ("--ha" in tm_args) is ha_on
    assert ("--jobmanager" in tm_args) is not ha_on
    assert "--pod-name" not in tm_args


def test_taskmanager_flags_are_exact_with_and_without_ha() -> None:
    plain = make_job(taskManager={"replicas": 2, "slots": 4})
    assert taskmanager.arguments(plain, HERE) == [
        "--slots", "4",
        "--host", "$(POD_IP)",
        "--data-port", "6121",
        "--tls-dir", "/etc/streamjob/tls",
        "--metrics-port", "9249",
        "--jobmanager", "wordcount-jobmanager.prod.svc:6123",
    ]  # fmt: skip
    with_ha = make_job(taskManager={"slots": 2}, **HA_ON)
    assert taskmanager.arguments(with_ha, target.DeploymentTarget(target.Color.GREEN)) == [
        "--slots", "2",
        "--host", "$(POD_IP)",
        "--data-port", "6121",
        "--tls-dir", "/etc/streamjob/tls",
        "--metrics-port", "9249",
        "--ha", "kubernetes",
        "--ha-cluster-id", "wordcount-green",
        "--ha-namespace", "$(POD_NAMESPACE)",
        "--ha-lease-duration", "15000",
        "--ha-renew-deadline", "10000",
        "--ha-retry-period", "2000",
    ]  # fmt: skip


@pytest.mark.parametrize("fields", [{}, HA_ON, {"savepoints": {"directory": "/sp"}, **HA_ON}])
def test_the_runtime_parses_the_rendered_command_lines(fields: dict[str, Any]) -> None:
    job = make_job(**fields)
    jm_argv = expand(jobmanager.arguments(job, HERE))
    tm_argv = expand(taskmanager.arguments(job, HERE))
    jm = cli.parser().parse_args(["jobmanager", *jm_argv])
    assert (jm.host, jm.rpc_port, jm.rest_port) == ("10.0.0.7", 6123, 8081)
    assert jm.bind_host == "0.0.0.0"  # localhost in the pod reaches it too
    assert jm.checkpoint_dir == job.spec.checkpointing.storage
    assert jm.savepoint_dir == job.spec.savepoints.directory
    tm = cli.parser().parse_args(["taskmanager", *tm_argv])
    assert (tm.host, tm.data_port, tm.slots) == ("10.0.0.7", 6121, 1)
    for parsed in (jm, tm):
        assert parsed.ha == ("kubernetes" if fields.get("highAvailability") else "none")
    if ha.enabled(job.spec):
        assert (jm.ha_cluster_id, jm.ha_namespace, jm.pod_name) == (
            "wordcount", "prod", "wordcount-jm-0",
        )  # fmt: skip
        assert tm.ha_cluster_id == "wordcount"
        assert tm.jobmanager is None
    else:
        assert tm.jobmanager == "wordcount-jobmanager.prod.svc:6123"


# -- Deployments and the Service -----------------------------------------------------------


def test_jobmanager_deployment_probes_resources_and_downward_api() -> None:
    job = make_job(
        jobManager={"replicas": 2, "resources": {"cpu": "500m", "memory": "2Gi"}}, **HA_ON
    )
    deployment = jobmanager.deployment(job, HERE)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(deployment, "jobmanager")
    probe = {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == probe
    assert c["livenessProbe"]["httpGet"] == {**probe, "path": "/healthz"}
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [
        ("rest", 8081),
        ("rpc", 6123),
        ("metrics", 9249),
    ]
    amounts = {"cpu": "500m", "memory": "2Gi"}
    assert c["resources"] == {"requests": amounts, "limits": amounts}
    downward = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e
    }
    assert downward == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "wordcount-jobmanager"
    assert pod["automountServiceAccountToken"] is True


def test_taskmanager_deployment_replicas_account_and_no_token_without_ha() -> None:
    job = make_job(taskManager={"replicas": 5, "slots": 2, "resources": {"memory": "4Gi"}})
    deployment = taskmanager.deployment(job, HERE)
    assert deployment["spec"]["replicas"] == 5
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "wordcount-taskmanager"
    assert pod["automountServiceAccountToken"] is False
    c = container(deployment, "taskmanager")
    assert c["command"] == ["streamjob", "taskmanager"]
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "streamjob",
        "app.kubernetes.io/instance": "wordcount",
        "app.kubernetes.io/component": "taskmanager",
        "streamjob.dev/cluster": "wordcount",
    }


@pytest.mark.parametrize(
    ("fields", "leader_only"), [({}, False), (HA_ON, True), ({"jobManager": {"replicas": 2}}, True)]
)
def test_the_service_selects_only_the_leader_iff_ha(
    fields: dict[str, Any], leader_only: bool
) -> None:
    job = make_job(**fields)
    svc = jobmanager.service(job, HERE)
    expected = {
        "app.kubernetes.io/name": "streamjob",
        "app.kubernetes.io/instance": "wordcount",
        "app.kubernetes.io/component": "jobmanager",
        "streamjob.dev/cluster": "wordcount",
    }
    if leader_only:
        expected["streamjob.dev/jobmanager-leader"] = "true"
    assert svc["spec"]["selector"] == expected
    assert svc["spec"]["publishNotReadyAddresses"] is False
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("rest", 8081, "rest"),
        ("rpc", 6123, "rpc"),
    ]
    assert jobmanager.rest_url(job, HERE) == "https://wordcount-jobmanager.prod.svc:8081"


def test_the_service_selects_the_pods_of_its_own_colour() -> None:
    blue, green = (
        target.DeploymentTarget(target.Color.BLUE),
        target.DeploymentTarget(target.Color.GREEN),
    )
    job = make_job(**HA_ON)
    for where, cluster in ((blue, "wordcount-blue"), (green, "wordcount-green")):
        selector = jobmanager.service(job, where)["spec"]["selector"]
        labels = jobmanager.deployment(job, where)["spec"]["template"]["metadata"]["labels"]
        assert selector["streamjob.dev/cluster"] == labels["streamjob.dev/cluster"] == cluster


# -- the podTemplate merge and the security defaults ----------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "merged"),
    [
        ({"a": {"b": 1, "c": 2}}, {"a": {"c": 3, "d": 4}}, {"a": {"b": 1, "c": 3, "d": 4}}),
        ({"a": 1}, {"a": None}, {}),
        ({"a": [1]}, {"a": {"x": 1}}, {"a": {"x": 1}}),
        ({"tolerations": [{"key": "a"}]}, {"tolerations": [{"key": "b"}]},
         {"tolerations": [{"key": "a"}, {"key": "b"}]}),
        ({"args": ["--x", "1"]}, {"args": ["--x", "2"]}, {"args": ["--x", "1", "--x", "2"]}),
        ({"command": ["streamjob"]}, {"command": ["sh", "-c"]}, {"command": ["sh", "-c"]}),
        ({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
         {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
         {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"},
                  {"name": "C", "value": "4"}]}),
        ({"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
         {"volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]},
         {"volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}]}),
        ({"ports": [{"name": "rest", "containerPort": 8081}]},
         {"ports": [{"containerPort": 8081, "hostPort": 80}, {"containerPort": 9249}]},
         {"ports": [{"name": "rest", "containerPort": 8081, "hostPort": 80},
                    {"containerPort": 9249}]}),
    ],
)  # fmt: skip
def test_merge_rules(ours: dict[str, Any], theirs: dict[str, Any], merged: dict[str, Any]) -> None:
    before = copy.deepcopy((ours, theirs))
    assert podtemplate.merge(ours, theirs) == merged
    assert (ours, theirs) == before


def test_the_user_pod_template_merges_labels_env_volumes_tolerations_and_sidecars() -> None:
    user: dict[str, Any] = {
        "metadata": {
            "labels": {"team": "data", "app.kubernetes.io/component": "hijacked"},
            "annotations": {"prometheus.io/scrape": "true"},
        },
        "spec": {
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "stream"}],
            "nodeSelector": {"pool": "stream"},
            "containers": [
                {
                    "name": "taskmanager",
                    "env": [{"name": "STREAMJOB_LOG_LEVEL", "value": "debug"},
                            {"name": "HOME", "value": "/home/app"}],
                    "volumeMounts": [{"name": "state", "mountPath": "/checkpoints"}],
                    "args": ["--heartbeat-timeout", "60000"],
                },
                {"name": "log-shipper", "image": "fluent-bit:3"},
            ],
            "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}],
        },
    }  # fmt: skip
    job = make_job(taskManager={"podTemplate": user})
    template = taskmanager.deployment(job, HERE)["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "app.kubernetes.io/name": "streamjob",
        "app.kubernetes.io/instance": "wordcount",
        "app.kubernetes.io/component": "taskmanager",  # the selector's labels are ours
        "streamjob.dev/cluster": "wordcount",
        "app.kubernetes.io/managed-by": "streamjob-operator",
        "team": "data",
    }
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    pod = template["spec"]
    assert pod["tolerations"] == user["spec"]["tolerations"]
    assert pod["nodeSelector"] == {"pool": "stream"}
    assert [c["name"] for c in pod["containers"]] == ["taskmanager", "log-shipper"]
    ours = pod["containers"][0]
    assert [(e["name"], e.get("value")) for e in ours["env"]] == [
        ("POD_NAME", None),
        ("POD_NAMESPACE", None),
        ("POD_IP", None),
        ("HOME", "/home/app"),
        ("STREAMJOB_LOG_LEVEL", "debug"),
    ]
    assert ours["volumeMounts"] == [
        {"name": "tls", "mountPath": "/etc/streamjob/tls", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "state", "mountPath": "/checkpoints"},
    ]
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        {"name": "tls", "secret": {"secretName": "wordcount-tls", "defaultMode": 0o440}},
        {"name": "state", "persistentVolumeClaim": {"claimName": "state"}},
    ]
    assert ours["args"][-2:] == ["--heartbeat-timeout", "60000"]
    assert ours["image"] == "streamjob:1"
    assert ours["securityContext"] == podtemplate.CONTAINER_SECURITY_CONTEXT
    assert pod["containers"][1] == {"name": "log-shipper", "image": "fluent-bit:3"}
    assert job.spec.taskManager.podTemplate == user  # not modified


@pytest.mark.parametrize(
    "build", [jobmanager.deployment, taskmanager.deployment], ids=["jobmanager", "taskmanager"]
)
def test_every_pod_gets_the_secure_defaults(build: Builder) -> None:
    deployment = build(make_job(), HERE)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    main = pod["containers"][0]
    assert main["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert pod["enableServiceLinks"] is False
    assert podtemplate.security_overrides(deployment["spec"]["template"], main["name"]) == []


def test_a_weakened_security_default_wins_but_is_reported() -> None:
    user: dict[str, Any] = {
        "spec": {
            "securityContext": {"runAsNonRoot": None, "runAsUser": 0},
            "containers": [
                {
                    "name": "jobmanager",
                    "securityContext": {
                        "readOnlyRootFilesystem": False,
                        "capabilities": {"add": ["NET_ADMIN"]},
                    },
                },
                {"name": "sidecar", "securityContext": {"privileged": True}},
            ],
        }
    }
    deployment = jobmanager.deployment(make_job(jobManager={"podTemplate": user}), HERE)
    template = deployment["spec"]["template"]
    assert "runAsNonRoot" not in template["spec"]["securityContext"]
    assert podtemplate.security_overrides(template, "jobmanager") == [
        "spec.securityContext.runAsNonRoot: None (default: True)",
        "spec.securityContext.runAsUser: 0 (default: 10001)",
        "spec.containers[0].securityContext.readOnlyRootFilesystem: False (default: True)",
        "spec.containers[0].securityContext.capabilities.add: ['NET_ADMIN'] (default: none)",
    ]


# -- names, labels and owners --------------------------------------------------------------


LONG = "a" * 60 + "." + "b" * 100  # a valid StreamJob name: a DNS subdomain
NAMES = ["wordcount", "my.job", "x" * 63, LONG, "7-eleven"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("color", [None, target.Color.BLUE])
def test_names_are_dns_labels_within_63_characters_and_deterministic(
    name: str, color: target.Color | None
) -> None:
    job, where = make_job(name, **HA_ON), target.DeploymentTarget(color)
    rendered = children.children(job, where)
    names = {m["metadata"]["name"] for m in rendered}
    for n in [*names, metadata.cluster_id(job, where)]:
        assert len(n) <= 63
        assert DNS_LABEL.fullmatch(n), n
    for m in rendered:
        for value in m["metadata"]["labels"].values():
            assert len(value) <= 63
    assert rendered == children.children(make_job(name, **HA_ON), where)


def test_names_keep_the_component_and_tell_long_streamjobs_apart() -> None:
    first, second = make_job(LONG + "x"), make_job(LONG + "y")
    jm = metadata.name(first, HERE, JM)
    assert len(jm) == 63
    assert jm.endswith("-jobmanager")
    assert jm.startswith("a" * 40)
    assert jm != metadata.name(second, HERE, JM)
    assert metadata.cluster_id(first, HERE) != metadata.cluster_id(second, HERE)
    assert metadata.name(make_job("wordcount"), HERE, TM) == "wordcount-taskmanager"
    assert metadata.name(make_job("my.job"), HERE, JM).startswith("my-job-")


def test_colours_are_separate_clusters() -> None:
    job = make_job(**HA_ON)
    ids = {metadata.cluster_id(job, target.DeploymentTarget(c)) for c in (None, *target.Color)}
    assert ids == {"wordcount", "wordcount-blue", "wordcount-green"}
    blue, green = (
        {m["metadata"]["name"] for m in children.children(job, target.DeploymentTarget(c))}
        for c in (target.Color.BLUE, target.Color.GREEN)
    )
    assert not blue & green


@pytest.mark.parametrize("fields", [{}, HA_ON])
def test_every_child_is_owned_by_the_streamjob_and_labelled(fields: dict[str, Any]) -> None:
    job = make_job(**fields)
    rendered = children.children(job, HERE)
    assert [m["kind"] for m in rendered] == [
        "ServiceAccount", "ServiceAccount", "Role", "Role", "RoleBinding", "RoleBinding",
        "NetworkPolicy", "NetworkPolicy", "ConfigMap", "Service", "Deployment", "Deployment",
    ]  # fmt: skip
    for m in rendered:
        assert m["metadata"]["namespace"] == "prod"
        assert m["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "streamjob.dev/v1alpha1",
                "kind": "StreamJob",
                "name": "wordcount",
                "uid": "6a1f-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "streamjob"
        assert labels["app.kubernetes.io/instance"] == "wordcount"
        assert labels["streamjob.dev/cluster"] == "wordcount"
        assert labels["app.kubernetes.io/component"] in {"jobmanager", "taskmanager", "config"}


def test_names_and_labels_match_the_runtime() -> None:
    cfg = services.HaConfig(kind=services.HaKind.KUBERNETES, cluster_id="wordcount-blue")
    assert ha.lease_name("wordcount-blue") == lease.lease_name(cfg)
    assert ha.configmap_name("wordcount-blue") == lease.configmap_name(cfg)
    assert metadata.LEADER_LABEL == lease.LEADER_LABEL
    assert metadata.CLUSTER_LABEL == lease.CLUSTER_LABEL


# -- RBAC ----------------------------------------------------------------------------------


def test_rbac_grants_exactly_what_the_runtime_uses_with_ha() -> None:
    job = make_job(**HA_ON)
    where = target.DeploymentTarget(target.Color.GREEN)
    assert rbac.rules(job, where, JM) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
         "resourceNames": ["streamjob-wordcount-green-leader"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update"],
         "resourceNames": ["streamjob-wordcount-green-ha"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]},
    ]  # fmt: skip
    assert rbac.rules(job, where, TM) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"],
         "resourceNames": ["streamjob-wordcount-green-leader"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
         "resourceNames": ["streamjob-wordcount-green-ha"]},
    ]  # fmt: skip
    binding = rbac.role_binding(job, where, TM)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "wordcount-green-taskmanager",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "wordcount-green-taskmanager", "namespace": "prod"}
    ]


def test_without_ha_the_roles_grant_nothing_and_no_token_is_mounted() -> None:
    job = make_job()
    for component in (JM, TM):
        assert rbac.role(job, HERE, component)["rules"] == []
        assert rbac.service_account(job, HERE, component)["automountServiceAccountToken"] is False


# -- the submission and the options --------------------------------------------------------


DEFAULT_OPTIONS = {
    "execution.checkpointing.interval": "10000",
    "execution.checkpointing.mode": "exactly-once",
    "execution.checkpointing.timeout": "600000",
    "pipeline.max-parallelism": "128",
    "state.checkpoints.num-retained": "3",
}


@pytest.mark.parametrize(
    ("fields", "extra"),
    [
        ({}, {}),
        ({"checkpointing": {"interval": "500ms", "mode": "at-least-once", "timeout": "1h",
                            "retained": 7},
          "job": {"entrypoint": "jobs.x", "maxParallelism": 256}},
         {"execution.checkpointing.interval": "500",
          "execution.checkpointing.mode": "at-least-once",
          "execution.checkpointing.timeout": "3600000", "state.checkpoints.num-retained": "7",
          "pipeline.max-parallelism": "256"}),
        ({"restartStrategy": {"type": "fixed-delay", "attempts": 5, "delay": "3s"}},
         {"restart-strategy.type": "fixed-delay", "restart-strategy.fixed-delay.attempts": "5",
          "restart-strategy.fixed-delay.delay": "3000"}),
        ({"restartStrategy": {"delay": "2s"}}, {"restart-strategy.fixed-delay.delay": "2000"}),
        ({"restartStrategy": {"type": "failure-rate", "delay": "1s", "maxFailuresPerInterval": 3,
                              "failureRateInterval": "5m"}},
         {"restart-strategy.type": "failure-rate", "restart-strategy.failure-rate.delay": "1000",
          "restart-strategy.failure-rate.max-failures-per-interval": "3",
          "restart-strategy.failure-rate.failure-rate-interval": "300000"}),
        ({"restartStrategy": {"type": "exponential-delay", "initialBackoff": "100ms",
                              "maxBackoff": "2m"}},
         {"restart-strategy.type": "exponential-delay",
          "restart-strategy.exponential-delay.initial-backoff": "100",
          "restart-strategy.exponential-delay.max-backoff": "120000"}),
        ({"restartStrategy": {"type": "none"}}, {"restart-strategy.type": "none"}),
        ({"config": {"execution.batch-size": "2048",
                     "execution.checkpointing.interval": "1000"}},
         {"execution.batch-size": "2048"}),
    ],
)  # fmt: skip
def test_submission_options_are_flink_keys_in_ms(
    fields: dict[str, Any], extra: dict[str, str]
) -> None:
    spec = make_spec(**fields)
    expected = {**DEFAULT_OPTIONS, **extra}
    assert submission.options(spec) == expected
    assert list(submission.options(spec)) == sorted(expected)
    # the runtime accepts every key and value, as `streamjob run -D` would
    config.apply_options(config.JobConfig(), submission.options(spec)).validate()


def test_typed_fields_win_over_spec_config_and_are_reported() -> None:
    spec = make_spec(config={"execution.checkpointing.interval": "1000", "pipeline.name": "wc"})
    assert submission.options(spec)["execution.checkpointing.interval"] == "10000"
    assert submission.options(spec)["pipeline.name"] == "wc"
    assert submission.shadowed_options(spec) == ["execution.checkpointing.interval"]
    assert submission.shadowed_options(make_spec()) == []


@pytest.mark.parametrize("savepoint", [None, "/state/savepoints/savepoint-1a2b"])
def test_the_job_submission_restores_from_the_target_savepoint(savepoint: str | None) -> None:
    job = make_job(
        job={"entrypoint": "jobs/wordcount.py", "args": ["in/", "out/"], "parallelism": 4,
             "allowNonRestoredState": True},
        taskManager={"replicas": 2, "slots": 2},
    )  # fmt: skip
    body = submission.job_submission(job, target.DeploymentTarget(savepoint_path=savepoint))
    assert body.model_dump() == {
        "entrypoint": "jobs/wordcount.py",
        "args": ["in/", "out/"],
        "parallelism": 4,
        "config": DEFAULT_OPTIONS,
        "savepoint_path": savepoint,
        "allow_non_restored_state": True,
        "restore_from_latest_in": None,  # only a lost job's recovery sets it
    }


def test_the_configmap_records_the_submitted_options() -> None:
    job = make_job(config={"execution.batch-size": "2048"})
    cm = submission.configmap(job, HERE)
    assert cm["metadata"]["name"] == "wordcount-config"
    assert cm["data"] == submission.job_submission(job, HERE).config


# -- the Kubernetes schema, offline --------------------------------------------------------


RENDERINGS: list[tuple[str, target.StreamJob, target.DeploymentTarget]] = [
    ("defaults", make_job(), HERE),
    ("ha", make_job(jobManager={"replicas": 3, "podTemplate": PVC_TEMPLATE}, **HA_ON), HERE),
    ("long-name-green", make_job(LONG, **HA_ON), target.DeploymentTarget(target.Color.GREEN)),
    (
        "user-template",
        make_job(
            taskManager={
                "podTemplate": {
                    "metadata": {"labels": {"team": "data"}},
                    "spec": {
                        "tolerations": [{"key": "dedicated", "effect": "NoSchedule"}],
                        "containers": [{"name": "sidecar", "image": "busybox:1"}],
                    },
                }
            }
        ),
        HERE,
    ),
]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("label", "job", "where"), RENDERINGS, ids=[r[0] for r in RENDERINGS])
def test_every_child_validates_against_the_kubernetes_schema(
    label: str, job: target.StreamJob, where: target.DeploymentTarget, version: str
) -> None:
    for manifest in children.children(job, where):
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{label}: {manifest['kind']} {manifest['metadata']['name']}: {e.message}")
