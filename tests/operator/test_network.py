"""NetworkPolicies, rendered and checked against the ports the job's pods declare and the ports
their processes really open (the test kubelet runs the rendered command lines)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamjob_operator.api import models
from streamjob_operator.desired import children, metadata, network, target
from tests.kube import KubeEmulator, fixtures
from tests.kube import test_pods as pods_test
from tests.kube.pods import PodRunner

kube = fixtures.kube

SETTINGS = network.Settings(
    operator_namespace="streamjob",
    rest_namespaces=("tools", "streamjob"),
    metrics_namespaces=("monitoring",),
)
HA_ON = {"highAvailability": {"enabled": True}}
TARGETS = [target.DeploymentTarget(color) for color in (None, *target.Color)]


def make_job(**fields: Any) -> target.StreamJob:
    spec = {"image": "streamjob:1", "job": {"entrypoint": "examples.wordcount"}, **fields}
    return target.StreamJob("wordcount", "prod", "uid-1", models.StreamJobSpec.model_validate(spec))


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) == {"matchLabels"}, selector  # all the builders use
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pods_of(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"] for m in rendered if m["kind"] == "Deployment"]


def policy_for(rendered: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, Any]:
    (policy,) = [
        m
        for m in rendered
        if m["kind"] == "NetworkPolicy" and selects(m["spec"]["podSelector"], labels)
    ]
    return policy


def declared_ports(pod: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []}


def rule_for(policy: dict[str, Any], port: int) -> dict[str, Any]:
    rules: list[dict[str, Any]] = policy["spec"]["ingress"]
    (rule,) = [r for r in rules if {"port": port, "protocol": "TCP"} in r["ports"]]
    return rule


def namespaces(rule: dict[str, Any]) -> list[str]:
    (peer,) = rule["from"]
    (expression,) = peer["namespaceSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("kubernetes.io/metadata.name", "In")
    return list(expression["values"])


@pytest.mark.parametrize("fields", [{}, HA_ON], ids=["plain", "ha"])
def test_every_port_a_pod_declares_has_exactly_its_rule_and_internal_ports_stay_in_the_cluster(
    fields: dict[str, Any],
) -> None:
    job = make_job(**fields)
    every_pod = [p for where in TARGETS for p in pods_of(children.children(job, where, SETTINGS))]
    for where in TARGETS:
        rendered = children.children(job, where, SETTINGS)
        own = pods_of(rendered)
        others = [p for p in every_pod if p not in own]
        for pod in own:
            labels = pod["metadata"]["labels"]
            policy = policy_for(rendered, labels)
            assert policy["spec"]["policyTypes"] == ["Ingress"]
            ports = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
            assert ports == declared_ports(pod)  # nothing unguarded, nothing extra
            component = labels[metadata.COMPONENT_LABEL]
            internal = 6123 if component == "jobmanager" else 6121
            (peer,) = rule_for(policy, internal)["from"]
            assert set(peer) == {"podSelector"}  # pods of this namespace only
            assert all(selects(peer["podSelector"], p["metadata"]["labels"]) for p in own)
            assert not any(selects(peer["podSelector"], p["metadata"]["labels"]) for p in others)
            assert namespaces(rule_for(policy, 9249)) == ["monitoring"]
            if component == "jobmanager":
                assert namespaces(rule_for(policy, 8081)) == ["streamjob", "tools"]


def test_without_an_operator_namespace_or_listed_ones_nobody_reaches_rest_and_off_means_none() -> (
    None
):
    job = make_job()
    where = target.DeploymentTarget()
    rendered = children.children(job, where, network.Settings())
    jm = next(p for p in pods_of(rendered) if "jobmanager" in p["spec"]["serviceAccountName"])
    policy = policy_for(rendered, jm["metadata"]["labels"])
    ports = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
    assert 8081 not in ports  # selected, and no rule lets anyone in
    assert "from" not in rule_for(policy, 9249)  # metrics from anywhere by default
    off = children.children(job, where, network.Settings(enabled=False))
    assert not [m for m in off if m["kind"] == "NetworkPolicy"]


# -- against the ports the processes open -------------------------------------------------------


def _descendants(pid: int) -> Iterator[int]:
    yield pid
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            yield from _descendants(int(child))


def listening_ports(pid: int) -> set[int]:
    """The TCP ports a process and its descendants listen on (from /proc)."""
    inodes: set[str] = set()
    pids = list(_descendants(pid))
    for each in pids:
        for fd in Path(f"/proc/{each}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                found.add(int(fields[1].rpartition(":")[2], 16))
    return found


@pytest.fixture
def runner(kube: KubeEmulator, tmp_path: Path) -> Iterator[PodRunner]:
    with PodRunner(kube, tmp_path / "pods", namespace=pods_test.NAMESPACE) as r:
        yield r


def test_the_ports_the_running_pods_open_are_the_ones_their_network_policy_guards(
    kube: KubeEmulator, runner: PodRunner, tmp_path: Path
) -> None:
    job = pods_test.create_streamjob(kube, "net", pods_test.spec(tmp_path))
    where = pods_test.HERE
    policies = network.network_policies(job, where, SETTINGS)
    for policy in policies:
        kube.create(policy)
    pods_test.deploy(kube, job)
    jm, tm = pods_test.jm_name(job), pods_test.tm_name(job)
    pods_test.wait_ready(kube, runner, jm, tm)
    for name in (jm, tm):
        (pod,) = runner.processes(name, pods_test.NAMESPACE)
        assert pod.pid is not None
        listening = listening_ports(pod.pid)
        local_to_container = {local: port for port, local in pod.ports.items()}
        assert listening <= set(local_to_container), (
            f"{name} listens on ports no NetworkPolicy rule names: "
            f"{sorted(listening - set(local_to_container))}"
        )
        opened = {local_to_container[p] for p in listening}
        stored = kube.get("v1", "pods", pod.name, pods_test.NAMESPACE)
        assert stored is not None
        labels = stored["metadata"]["labels"]
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        guarded = {p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]}
        assert opened == guarded
