"""Spec validation: the CRD's CEL rules in Python, and what the API server cannot check."""

from __future__ import annotations

from typing import Any

import pytest

from streamjob_operator.api import crd, models
from streamjob_operator.planning import actions, configuration, lifecycle, planner, validation
from tests.operator import test_planning as p


def raw_spec(**fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "image": "streamjob:1",
        "job": {"entrypoint": "examples.clickstream"},
        "savepoints": {"directory": "/state/savepoints"},
    }
    for key, value in fields.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def test_a_valid_spec_passes_with_its_defaults() -> None:
    result = validation.validate(raw_spec())
    assert result.valid
    assert result.errors == ()
    assert result.spec is not None
    assert result.spec.job.upgradeMode is models.UpgradeMode.SAVEPOINT


def test_every_cel_rule_of_the_crd_has_a_python_twin() -> None:
    rules = [v["rule"] for v in crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["spec"]["x-kubernetes-validations"]]  # fmt: skip
    assert sorted(rules) == sorted(validation.CEL_TWINS)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"jobManager": {"replicas": 2}}, "jobManager.replicas > 1 needs highAvailability"),
        ({"savepoints": {"directory": None}}, "upgradeMode savepoint needs savepoints.directory"),
        (
            {"job": {"entrypoint": "x", "upgradeMode": "stateless"}, "savepoints": {
                "directory": None, "interval": "5m"}},
            "savepoints.interval needs savepoints.directory",
        ),
        (
            {"job": {"entrypoint": "x", "parallelism": 8, "maxParallelism": 4},
             "taskManager": {"replicas": 8}},
            "job.parallelism must not exceed job.maxParallelism",
        ),
        ({"job": {"entrypoint": "x", "parallelism": 3}}, "job.parallelism needs at least"),
    ],
)  # fmt: skip
def test_each_cel_rule_is_enforced_with_the_crd_message(
    fields: dict[str, Any], message: str
) -> None:
    result = validation.validate(raw_spec(**fields))
    assert not result.valid
    assert len(result.errors) == 1
    assert result.errors[0].startswith(message)


@pytest.mark.parametrize(
    "fields",
    [
        {"checkpointing": {"storage": "s3://bucket/checkpoints"}},
        {"savepoints": {"directory": "s3://bucket/savepoints"}},
        {"job": {"entrypoint": "x", "initialSavepointPath": "s3://bucket/sp/savepoint-1"}},
    ],
)
def test_s3_urls_are_accepted_as_checkpoint_and_savepoint_locations(
    fields: dict[str, Any],
) -> None:
    result = validation.validate(raw_spec(**fields))
    assert result.valid, result.errors


@pytest.mark.parametrize("url", ["s3:///no-bucket", "gs://bucket/x", "S3://bucket/x"])
def test_other_urls_are_refused_in_a_sentence(url: str) -> None:
    result = validation.validate(raw_spec(checkpointing={"storage": url}))
    assert not result.valid
    assert "or an s3://bucket/prefix URL" in result.errors[0]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        (
            {"checkpointing": {"storage": "checkpoints"}},
            "checkpointing.storage must be an absolute",
        ),
        ({"savepoints": {"directory": "./sp"}}, "savepoints.directory must be an absolute path"),
        (
            {"job": {"entrypoint": "x", "initialSavepointPath": "sp/savepoint-1"}},
            "job.initialSavepointPath must be an absolute path",
        ),
        ({"checkpointing": {"interval": "0s"}}, "checkpointing.interval must be longer than zero"),
        (
            {"highAvailability": {"renewDeadline": "20s"}},
            "leaseDuration > renewDeadline > retryPeriod",
        ),
        (
            {"stability": {"window": "10m", "timeout": "5m"}},
            "stability.timeout (5m) must be longer than stability.window (10m)",
        ),
        (
            {"config": {"execution.checkpointing.interval": "1000"}},
            "config['execution.checkpointing.interval'] = '1000' conflicts",
        ),
    ],
)
def test_what_the_api_server_cannot_check_is_refused_in_a_sentence(
    fields: dict[str, Any], fragment: str
) -> None:
    result = validation.validate(raw_spec(**fields))
    assert not result.valid
    assert any(fragment in e for e in result.errors), result.errors


def test_an_option_equal_to_its_typed_field_is_not_a_conflict() -> None:
    assert validation.validate(raw_spec(config={"execution.checkpointing.interval": "10000"})).valid


def test_schema_errors_name_the_field_and_what_to_do() -> None:
    result = validation.validate(raw_spec(job={"entrypoint": "x", "parallelism": 0}, extra=1))
    assert not result.valid
    assert any(e.startswith("spec.job.parallelism:") for e in result.errors)
    assert any(e.startswith("spec.extra is not a StreamJob field") for e in result.errors)


def test_max_parallelism_cannot_change_across_a_restore_with_state() -> None:
    old = validation.validate(raw_spec()).spec
    new = validation.validate(raw_spec(job={"entrypoint": "x", "maxParallelism": 256})).spec
    assert old is not None
    assert new is not None
    errors = validation.transition_errors(old, new, with_state=True)
    assert len(errors) == 1
    assert "job.maxParallelism cannot change from 128 to 256" in errors[0]
    assert validation.transition_errors(old, new, with_state=False) == []


# -- privileged pod templates ---------------------------------------------------------------

PRIVILEGED = {
    "a privileged container": (
        {"spec": {"containers": [{"name": "taskmanager",
                                  "securityContext": {"privileged": True}}]}},
        "taskManager.podTemplate spec.containers[0].securityContext.privileged: true",
    ),
    "the host's network": (
        {"spec": {"hostNetwork": True}},
        "taskManager.podTemplate spec.hostNetwork: true",
    ),
    "the host's processes": ({"spec": {"hostPID": True}}, "spec.hostPID: true"),
    "the host's IPC": ({"spec": {"hostIPC": True}}, "spec.hostIPC: true"),
    "a hostPath volume": (
        {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
        "spec.volumes[0].hostPath",
    ),
    "an added capability on a sidecar": (
        {"spec": {"containers": [{"name": "shipper", "image": "x",
                                  "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}},
        "spec.containers[0].securityContext.capabilities.add: ['SYS_ADMIN']",
    ),
    "root by user id": (
        {"spec": {"securityContext": {"runAsUser": 0}}},
        "the taskmanager container: runs as root (runAsUser: 0)",
    ),
    "root by dropping runAsNonRoot": (
        {"spec": {"securityContext": {"runAsNonRoot": None},
                  "containers": [{"name": "taskmanager",
                                  "securityContext": {"runAsNonRoot": False}}]}},
        "spec.containers[0]: may run as root (runAsNonRoot is False",
    ),
    "a host port": (
        {"spec": {"containers": [{"name": "taskmanager",
                                  "ports": [{"containerPort": 6121, "hostPort": 6121}]}]}},
        "spec.containers[0].ports[0].hostPort: 6121",
    ),
    "a privileged init container": (
        {"spec": {"initContainers": [{"name": "setup", "image": "x",
                                      "securityContext": {"privileged": True}}]}},
        "spec.initContainers[0].securityContext.privileged: true",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("template", "found"), PRIVILEGED.values(), ids=list(PRIVILEGED))
def test_a_privileged_pod_template_is_invalid_unless_the_operator_allows_it(
    template: dict[str, Any], found: str
) -> None:
    raw = raw_spec(taskManager={"podTemplate": template})
    result = validation.validate(raw)
    assert not result.valid
    (error,) = result.errors
    assert found in error
    assert "podTemplate.allowPrivileged" in error  # what to do about it
    assert validation.validate(raw, allow_privileged=True).valid


def test_pod_templates_that_keep_the_secure_defaults_are_valid() -> None:
    template = {
        "metadata": {"labels": {"team": "data"}},
        "spec": {
            "securityContext": {"runAsUser": 20000, "runAsGroup": 20000},
            "containers": [
                {"name": "jobmanager", "securityContext": {"readOnlyRootFilesystem": False}},
                {"name": "shipper", "image": "fluent-bit:3",
                 "securityContext": {"capabilities": {"drop": ["ALL"]}}},
            ],
            "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}],
        },
    }  # fmt: skip
    assert validation.validate(raw_spec(jobManager={"podTemplate": template})).valid


def test_a_privileged_new_spec_is_refused_with_an_event_while_the_last_valid_one_runs() -> None:
    template = {"spec": {"containers": [{"name": "taskmanager",
                                         "securityContext": {"privileged": True}}]}}  # fmt: skip
    spec = p.raw(image="streamjob:2", taskManager={"replicas": 2, "podTemplate": template})
    plan = planner.plan(p.seen(), spec, p.status(), p.NOW)
    assert p.summary(plan) == ["event InvalidSpec"]  # nothing stopped, nothing applied
    (event,) = [a for a in plan.actions if isinstance(a, actions.RecordEvent)]
    assert event.type is actions.EventType.WARNING
    assert "securityContext.privileged: true" in event.message
    assert plan.status.error is not None
    assert "the last valid spec keeps running" in plan.status.error
    assert plan.status.reconciliation.lastReconciledSpec == p.encoded()
    condition = lifecycle.condition(plan.status, lifecycle.SPEC_VALID)
    assert condition is not None
    assert condition.status == "False"
    # an operator that allows privileged pods upgrades to it
    allowed = configuration.OperatorConfiguration(allow_privileged_pods=True)
    upgrade = planner.plan(p.seen(), spec, p.status(), p.NOW, allowed)
    assert "event Upgrading" in p.summary(upgrade)
