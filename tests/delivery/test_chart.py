"""The operator's Helm chart (charts/streamjob-operator), rendered by a real helm.

helm comes from ``.tools/bin`` (``scripts/tools.sh`` fetches it, pinned) or the PATH.
Without it these tests skip, saying how to get it, unless STREAMJOB_REQUIRE_TOOLS is set
(``scripts/test.sh`` sets it after fetching): then they fail.

Checked: ``helm lint --strict`` with the default values and a non-default set; what the
chart renders for both, every object validated offline by kubernetes-validate --strict
(the ServiceMonitor, not a built-in kind, by hand); the values schema refusing unknown
keys at any depth with a message naming them; the CRD equal to the generated one and
gated by crds.enabled / crds.keep; the RBAC, evaluated as the API server would for the
operator's ServiceAccount, covering what the operator does (``__main__``'s docstring)
and every rule of the Roles it creates (``desired.rbac``, imported, so they cannot
drift), and nothing more than it needs; the Deployment's flags, parsed by the
operator's own parser, security context and probes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from streamjob_operator import __main__ as operator_main
from streamjob_operator import handlers
from streamjob_operator.api import crd, models
from streamjob_operator.desired import children, ha, metadata, rbac, target
from tests.kube import KubeEmulator, fixtures

kube = fixtures.kube
kubeconfig = fixtures.kubeconfig

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streamjob-operator"
CHART_CRD = CHART / "files" / crd.FILE
COMMITTED_CRD = ROOT / "crds" / crd.FILE
RELEASE = "streamjob-operator"
NAMESPACE = "streamjob"
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]

Doc = dict[str, Any]
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: the CRD is long

# A values file that changes everything it can, the namespaces watched above all.
NON_DEFAULT: Doc = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/streamjob", "tag": "1.2.3",
              "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespaces": ["team-a", "team-b"],
    "serviceAccount": {"annotations": {"example.com/role": "streamjob"}},
    "crds": {"enabled": False},
    "leaderElection": {"leaseName": "sj-leader", "leaseDuration": 30, "renewDeadline": 20,
                       "retryPeriod": 4},
    "operator": {"logLevel": "DEBUG", "reconcileInterval": "30s", "progressCheckInterval": "2s",
                 "checkpointStatusInterval": "1m",
                 "savepointOnDeletion": True, "deletionSavepointTimeout": "2m"},
    "savepointVolumes": [
        {"mountPath": "/data",
         "volume": {"persistentVolumeClaim": {"claimName": "streamjob-data"}}},
        {"mountPath": "/archive", "subPath": "savepoints", "volume": {"nfs": {
            "server": "nfs.example.com", "path": "/exports"}}},
    ],
    "savepointBuckets": {
        "roots": ["s3://streamjob/savepoints", "s3://archive"],
        "env": [{"name": "AWS_ACCESS_KEY_ID",
                 "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "id"}}}],
    },
    "networkPolicy": {"enabled": False, "restNamespaces": ["tools", "ci"],
                      "metricsNamespaces": ["monitoring"]},
    "podTemplate": {"allowPrivileged": True},
    "metrics": {"port": 9090, "serviceMonitor": {"enabled": True, "interval": "15s",
                                                 "labels": {"release": "prometheus"}}},
    "resources": {"requests": {"cpu": "50m", "memory": "200Mi"},
                  "limits": {"cpu": 1, "memory": "1Gi"}},
    "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "streamjob-operator"}},
    }],
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "streaming",
                     "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "preference": {"matchExpressions": [
            {"key": "node-role", "operator": "In", "values": ["control"]}]},
    }]}},
    "podAnnotations": {"example.com/scrape": "true"},
    "podLabels": {"team": "data"},
}  # fmt: skip


# -- helm ----------------------------------------------------------------------------------


def _helm_binary() -> str | None:
    pinned = ROOT / ".tools" / "bin" / "helm"
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return str(pinned)
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    found = _helm_binary()
    if found is None:
        if os.environ.get("STREAMJOB_REQUIRE_TOOLS"):
            pytest.fail(
                "helm is in neither .tools/bin nor the PATH, and STREAMJOB_REQUIRE_TOOLS is"
                " set: `bash scripts/tools.sh` should have fetched it (see its output)"
            )
        pytest.skip(
            "helm is not installed: `bash scripts/tools.sh` fetches it into .tools/bin"
            " (set STREAMJOB_REQUIRE_TOOLS=1 to fail instead of skipping)"
        )
    return found


@pytest.fixture(scope="module")
def non_default_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("values") / "non-default.yaml"
    path.write_text(yaml.safe_dump(NON_DEFAULT))
    return path


@pytest.fixture(params=["default", "non-default"])
def values_args(request: pytest.FixtureRequest, non_default_file: Path) -> tuple[str, ...]:
    """No arguments (the default values), or the non-default values file."""
    return () if request.param == "default" else ("--values", str(non_default_file))


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


@functools.cache
def _template(helm: str, args: tuple[str, ...], release: str) -> str:
    done = run_helm(helm, "template", release, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def render(helm: str, *args: str, release: str = RELEASE) -> list[Doc]:
    return [d for d in yaml.load_all(_template(helm, args, release), Loader=LOADER) if d]


# Everything optional off, in one render (each test below checks its part).
MINIMAL = (
    *("--set", "crds.keep=false"),
    *("--set", "rbac.create=false"),
    *("--set", "replicaCount=1"),
    *("--set", "spreadAcrossNodes=false"),
)


def render_error(helm: str, *args: str) -> str:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode != 0, f"helm template {' '.join(args)} rendered:\n{done.stdout}"
    return done.stderr


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {inventory(docs)}"
    return found[0]


def inventory(docs: Iterable[Doc]) -> set[tuple[str, str, str | None]]:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs}


def operator_container(docs: list[Doc]) -> Doc:
    [container] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


# -- lint, kinds, offline validation -------------------------------------------------------


def test_helm_lint_strict_passes(helm: str, values_args: tuple[str, ...]) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), *values_args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout
    assert "[ERROR]" not in done.stdout


def test_the_default_release_renders_exactly_these_objects(helm: str) -> None:
    docs = render(helm)
    name = RELEASE
    assert inventory(docs) == {
        ("CustomResourceDefinition", "streamjobs.streamjob.dev", None),
        ("ServiceAccount", name, NAMESPACE),
        ("ClusterRole", name, None),
        ("ClusterRoleBinding", name, None),
        ("Role", f"{name}-leader-election", NAMESPACE),
        ("RoleBinding", f"{name}-leader-election", NAMESPACE),
        ("Service", f"{name}-metrics", NAMESPACE),
        ("Deployment", name, NAMESPACE),
        ("PodDisruptionBudget", name, NAMESPACE),
    }
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert operator_container(docs)["image"] == "streamjob:0.1.0"  # tag = appVersion


def test_the_non_default_release_renders_exactly_these_objects(
    helm: str, non_default_file: Path
) -> None:
    docs = render(helm, "--values", str(non_default_file))
    name = RELEASE
    assert inventory(docs) == {
        ("ServiceAccount", name, NAMESPACE),
        ("ClusterRole", name, None),
        ("ClusterRoleBinding", name, None),
        ("Role", name, "team-a"),
        ("RoleBinding", name, "team-a"),
        ("Role", name, "team-b"),
        ("RoleBinding", name, "team-b"),
        ("Role", f"{name}-leader-election", NAMESPACE),
        ("RoleBinding", f"{name}-leader-election", NAMESPACE),
        ("Service", f"{name}-metrics", NAMESPACE),
        ("Deployment", name, NAMESPACE),
        ("PodDisruptionBudget", name, NAMESPACE),
        ("ServiceMonitor", name, NAMESPACE),
    }
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert container["image"] == "registry.example.com/streamjob:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == NON_DEFAULT["resources"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["nodeSelector"] == NON_DEFAULT["nodeSelector"]
    assert pod["tolerations"] == NON_DEFAULT["tolerations"]
    assert pod["affinity"] == NON_DEFAULT["affinity"]
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"
    ]  # fmt: skip
    template_meta = deployment["spec"]["template"]["metadata"]
    assert template_meta["annotations"] == {"example.com/scrape": "true"}
    assert template_meta["labels"]["team"] == "data"
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {
        "example.com/role": "streamjob"
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_built_in_object_validates_strictly(
    helm: str, values_args: tuple[str, ...], version: str
) -> None:
    docs = render(helm, *values_args)
    failures = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a built-in kind: checked by hand below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    assert failures == []


def test_the_service_monitor_scrapes_the_metrics_service(helm: str, non_default_file: Path) -> None:
    docs = render(helm, "--values", str(non_default_file))
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selected = spec["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert spec["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["ports"][0]["port"] == 9090
    assert not any(d["kind"] == "ServiceMonitor" for d in render(helm))


def test_the_kubernetes_version_floor_is_enforced(helm: str) -> None:
    error = render_error(helm, "--kube-version", "1.26.0")
    assert "chart requires kubeVersion: >=1.27.0-0" in error


# -- values schema -------------------------------------------------------------------------


SCHEMA_ERROR = "values don't meet the specifications of the schema"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("bogus=1", "- at '': additional properties 'bogus' not allowed"),
        (
            "metrics.serviceMonitor.intervall=30s",
            "- at '/metrics/serviceMonitor': additional properties 'intervall' not allowed",
        ),
    ],
)
def test_an_unknown_key_alone_is_refused_naming_it(helm: str, setting: str, message: str) -> None:
    error = render_error(helm, "--set", setting)
    assert SCHEMA_ERROR in error
    assert message in error


# Helm reports every violation at once: one render checks them all.
BAD_VALUES = {
    "image.tags=1": "- at '/image': additional properties 'tags' not allowed",
    "securityContext.capabilities.dropp[0]=ALL": (
        "- at '/securityContext/capabilities': additional properties 'dropp' not allowed"
    ),
    "replicaCount=0": "- at '/replicaCount': minimum: got 0, want 1",
    "image.pullPolicy=Sometimes": (
        "- at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"
    ),
    "operator.reconcileInterval=1 minute": (
        "- at '/operator/reconcileInterval': '1 minute' does not match pattern"
    ),
    "watchNamespaces[0]=Team_A": "- at '/watchNamespaces/0': 'Team_A' does not match pattern",
    "metrics.port=70000": "- at '/metrics/port': maximum: got 70,000, want 65,535",
    "operator.logLevel=info": "- at '/operator/logLevel': value must be one of 'DEBUG'",
    "leaderElection.leaseDuration=-1": "- at '/leaderElection/leaseDuration': exclusiveMinimum",
}


@functools.cache
def _bad_values_error(helm: str) -> str:
    settings = [arg for setting in BAD_VALUES for arg in ("--set", setting)]
    volume = 'savepointVolumes=[{"mountPath": "/data"}]'
    return render_error(helm, *settings, "--set-json", volume)


@pytest.mark.parametrize("setting", BAD_VALUES)
def test_the_schema_refuses_bad_values_naming_them(helm: str, setting: str) -> None:
    error = _bad_values_error(helm)
    assert SCHEMA_ERROR in error
    assert BAD_VALUES[setting] in error


def test_a_savepoint_volume_needs_its_volume(helm: str) -> None:
    assert "- at '/savepointVolumes/0': missing property 'volume'" in _bad_values_error(helm)


def test_lease_timings_out_of_order_are_refused_naming_them(helm: str) -> None:
    error = render_error(helm, "--set", "leaderElection.retryPeriod=12")
    assert (
        "leaderElection: leaseDuration (15) must be greater than renewDeadline (10), which"
        " must be greater than retryPeriod (12)"
    ) in error


def test_an_existing_service_account_must_be_named(helm: str) -> None:
    error = render_error(helm, "--set", "serviceAccount.create=false")
    assert "serviceAccount.name: name an existing ServiceAccount" in error
    docs = render(helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert not any(d["kind"] == "ServiceAccount" for d in docs)
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(docs, "ClusterRoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "ops", "namespace": NAMESPACE}
    ]


# -- the CRD -------------------------------------------------------------------------------


def test_the_charts_crd_copy_matches_the_models() -> None:
    assert CHART_CRD.read_text() == crd.render(), (
        f"{CHART_CRD.relative_to(ROOT)} is stale: regenerate it (and crds/) with"
        " `uv run python -m streamjob_operator.api.crd --write`"
    )


def test_the_generator_writes_both_copies_from_the_repository_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        crd.main(["--write"])
    assert refused.value.code == 2
    assert "run --write from the repository root" in capsys.readouterr().err
    for written_to in crd.TARGETS:
        written_to.parent.mkdir(parents=True)
    assert crd.main(["--write"]) == 0
    written = [(tmp_path / t).read_text() for t in crd.TARGETS]
    assert written == [crd.render(), crd.render()]
    assert [t.parent for t in crd.TARGETS] == [
        COMMITTED_CRD.parent.relative_to(ROOT),
        CHART_CRD.parent.relative_to(ROOT),
    ]


def test_the_rendered_crd_is_the_generated_one_kept_on_uninstall(helm: str) -> None:
    rendered = one(render(helm), "CustomResourceDefinition")
    generated = yaml.safe_load(COMMITTED_CRD.read_text())
    assert {k: v for k, v in rendered.items() if k != "metadata"} == {
        k: v for k, v in generated.items() if k != "metadata"
    }
    meta = rendered["metadata"]
    assert meta["name"] == generated["metadata"]["name"] == f"{models.PLURAL}.{models.GROUP}"
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_crds_keep_off_lets_uninstall_remove_the_crd(helm: str) -> None:
    rendered = one(render(helm, *MINIMAL), "CustomResourceDefinition")
    assert "annotations" not in rendered["metadata"]


def test_crds_enabled_off_renders_no_crd(helm: str, non_default_file: Path) -> None:
    assert NON_DEFAULT["crds"] == {"enabled": False}
    docs = render(helm, "--values", str(non_default_file))
    assert not any(d["kind"] == "CustomResourceDefinition" for d in docs)
    assert any(d["kind"] == "Deployment" for d in docs)


# -- RBAC, evaluated as the API server does ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
    """One API request; ``name`` None: any object (a list, or a create before the name)."""

    group: str
    resource: str
    verb: str
    namespace: str | None  # None: cluster-scoped
    name: str | None = None

    def __str__(self) -> str:
        where = f"in {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {self.group or 'core'}/{self.resource} {self.name or '*'} {where}"


def _rule_allows(rule: Doc, request: Request) -> bool:
    names = rule.get("resourceNames") or []
    return (
        request.group in rule["apiGroups"]
        and request.resource in rule["resources"]
        and request.verb in rule["verbs"]
        and (not names or request.name in names)
    )


def allowed(docs: list[Doc], account: tuple[str, str], request: Request) -> bool:
    """RBAC authorisation of ``request`` for the ServiceAccount ``account`` (namespace,
    name) by the rendered Roles, ClusterRoles and their bindings."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    subject = {"kind": "ServiceAccount", "namespace": account[0], "name": account[1]}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        if binding["kind"] == "RoleBinding":
            namespace = binding["metadata"]["namespace"]
            if request.namespace != namespace:
                continue
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        role_namespace = binding["metadata"]["namespace"] if ref["kind"] == "Role" else None
        rules = roles.get((ref["kind"], role_namespace, ref["name"]))
        assert rules is not None, f"{binding['kind']} {binding['metadata']['name']} binds {ref}"
        if any(_rule_allows(rule, request) for rule in rules):
            return True
    return False


def _plural(kind: str) -> str:
    lower = kind.lower()
    return f"{lower[:-1]}ies" if lower.endswith("y") else f"{lower}s"


def operator_needs(namespace: str) -> list[Request]:
    """What the operator does in a namespace whose StreamJobs it reconciles."""
    needs = [
        # __main__'s docstring: the reconcile loop and kopf
        *(Request("streamjob.dev", "streamjobs", v, namespace) for v in
          ("get", "list", "watch", "patch")),
        *(Request("streamjob.dev", "streamjobs/status", v, namespace) for v in ("get", "patch")),
        Request("", "events", "create", namespace),
        # the job's CA, certificate and REST token Secrets (acting.credentials), by name
        *(Request("", "secrets", v, namespace) for v in ("get", "create", "update")),
        # kopf watches the Deployments it manages (a step goes on at their changes)
        *(Request("apps", "deployments", v, namespace) for v in ("list", "watch")),
    ]  # fmt: skip
    # the children it applies and deletes: every kind the desired builders render
    job = target.StreamJob("wordcount", namespace, "uid-1", highly_available_spec())
    # HA metadata it discards (acting.children.delete_ha_metadata): ConfigMap and Lease
    for where in targets():
        cluster_id = metadata.cluster_id(job, where)
        needs.append(Request("", "configmaps", "delete", namespace, ha.configmap_name(cluster_id)))
        needs.append(
            Request("coordination.k8s.io", "leases", "delete", namespace, ha.lease_name(cluster_id))
        )
    for where in targets():
        for child in children.children(job, where):
            group = child["apiVersion"].rpartition("/")[0]
            for verb in ("get", "create", "update", "delete"):
                needs.append(Request(group, _plural(child["kind"]), verb, namespace))
    # the rules it grants its JobManagers' and TaskManagers' Roles, which it must hold
    for where in targets():
        for component in metadata.Component:
            for rule in rbac.rules(job, where, component):
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            for name in rule.get("resourceNames") or [None]:
                                needs.append(Request(group, resource, verb, namespace, name))
    return needs


def highly_available_spec() -> models.StreamJobSpec:
    return models.StreamJobSpec.model_validate(
        {
            "image": "streamjob:dev",
            "job": {"entrypoint": "examples.clickstream"},
            "highAvailability": {"enabled": True},
        }
    )


def targets() -> list[target.DeploymentTarget]:
    return [target.DeploymentTarget(color) for color in (None, *target.Color)]


def test_the_granted_roles_are_not_empty() -> None:
    """Guards the coverage tests below: with HA on the builders do grant rules."""
    job = target.StreamJob("wordcount", "team-a", "uid-1", highly_available_spec())
    assert rbac.rules(job, target.DeploymentTarget(), metadata.Component.JOBMANAGER)


def lease_needs(name: str) -> list[Request]:
    return [Request("coordination.k8s.io", "leases", "create", NAMESPACE)] + [
        Request("coordination.k8s.io", "leases", v, NAMESPACE, name) for v in ("get", "update")
    ]


CRD_NEEDS = [
    Request("apiextensions.k8s.io", "customresourcedefinitions", v, None) for v in ("list", "watch")
]
NAMESPACE_NEEDS = [Request("", "namespaces", v, None) for v in ("list", "watch")]


def denied(docs: list[Doc], account: tuple[str, str], requests: list[Request]) -> list[str]:
    return sorted({str(r) for r in requests if not allowed(docs, account, r)})


def test_watching_every_namespace_the_operator_may_do_what_it_does(helm: str) -> None:
    docs = render(helm)
    account = (NAMESPACE, RELEASE)
    needs = [
        *operator_needs("team-a"),
        *operator_needs("default"),
        *CRD_NEEDS,
        *NAMESPACE_NEEDS,
        *lease_needs(RELEASE),
    ]
    assert denied(docs, account, needs) == []
    # the Deployment's flags name the Lease the Role is about
    assert f"--lease-name={RELEASE}" in operator_container(docs)["args"]


def test_watching_some_namespaces_the_operator_may_act_only_there(
    helm: str, non_default_file: Path
) -> None:
    docs = render(helm, "--values", str(non_default_file))
    account = (NAMESPACE, RELEASE)
    needs = [*operator_needs("team-a"), *operator_needs("team-b"), *CRD_NEEDS]
    assert denied(docs, account, [*needs, *lease_needs("sj-leader")]) == []
    # nowhere else (but for creating its Lease), and no namespace list
    elsewhere = [*operator_needs("other"), *operator_needs(NAMESPACE)]
    own_lease = lease_needs("sj-leader")[0]
    assert [str(r) for r in elsewhere if r != own_lease and allowed(docs, account, r)] == []
    assert [str(r) for r in NAMESPACE_NEEDS if allowed(docs, account, r)] == []
    # its own Lease only, by name
    assert not allowed(docs, account, Request("coordination.k8s.io", "leases", "update",
                                              NAMESPACE, "someone-elses"))  # fmt: skip
    assert "--lease-name=sj-leader" in operator_container(docs)["args"]


def test_no_wildcards_escalation_or_secrets_beyond_get_create_update(
    helm: str, values_args: tuple[str, ...]
) -> None:
    docs = render(helm, *values_args)
    rules = [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]
    assert rules
    secret_verbs: set[str] = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        if "secrets" in rule["resources"]:
            assert rule["resources"] == ["secrets"], rule  # a rule of their own
            secret_verbs |= set(rule["verbs"])
    # exactly what acting.credentials does: never list, watch or delete another's Secrets
    assert secret_verbs == {"get", "create", "update"}


def test_every_rule_says_why(helm: str, values_args: tuple[str, ...]) -> None:
    sources = _template(helm, values_args, RELEASE).split("# Source: streamjob-operator/")
    text = "".join(s for s in sources if s.startswith("templates/rbac.yaml"))
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
    assert starts
    unexplained = [lines[i] for i in starts if not lines[i - 1].lstrip().startswith("#")]
    assert unexplained == []


def test_rbac_create_false_renders_no_rbac(helm: str) -> None:
    docs = render(helm, *MINIMAL)
    rbac_kinds = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
    assert not any(d["kind"] in rbac_kinds for d in docs)


# -- the Deployment ------------------------------------------------------------------------


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in container args."""
    out = []
    for arg in args:
        for key, value in env.items():
            arg = arg.replace(f"$({key})", value)
        out.append(arg)
    return out


def test_the_default_flags_are_exact_and_the_operator_parses_them(helm: str) -> None:
    container = operator_container(render(helm))
    assert container["command"] == ["streamjob-operator"]
    assert container["args"] == [
        f"--lease-name={RELEASE}",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--lease-duration=15",
        "--renew-deadline=10",
        "--retry-period=2",
        "--metrics-port=8080",
        "--reconcile-interval=60s",
        "--progress-check-interval=5s",
        "--checkpoint-status-interval=15s",
        "--deletion-savepoint-timeout=5m",
        "--log-level=INFO",
        "--network-policy",
    ]
    args = operator_main.parser().parse_args(
        _expand(container["args"], {"POD_NAMESPACE": NAMESPACE})
    )
    assert args.namespace == []
    assert (args.lease_name, args.lease_namespace) == (RELEASE, NAMESPACE)
    assert args.savepoint_on_deletion is False
    assert args.savepoint_volume == []
    assert args.savepoint_bucket == []
    assert args.network_policy is True
    assert (args.rest_namespace, args.metrics_namespace) == ([], [])
    assert args.allow_privileged_pods is False
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}


def test_the_non_default_flags_reach_the_operator(helm: str, non_default_file: Path) -> None:
    docs = render(helm, "--values", str(non_default_file))
    container = operator_container(docs)
    args = operator_main.parser().parse_args(
        _expand(container["args"], {"POD_NAMESPACE": NAMESPACE})
    )
    assert args.namespace == ["team-a", "team-b"]
    assert (args.lease_name, args.lease_namespace) == ("sj-leader", NAMESPACE)
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (30, 20, 4)
    assert args.metrics_port == 9090
    assert args.log_level == "DEBUG"
    assert args.savepoint_on_deletion is True
    assert args.deletion_savepoint_timeout.total_seconds() == 120
    assert args.reconcile_interval.total_seconds() == 30
    assert args.progress_check_interval.total_seconds() == 2
    assert args.checkpoint_status_interval.total_seconds() == 60
    assert args.savepoint_volume == [Path("/data"), Path("/archive")]
    assert args.savepoint_bucket == ["s3://streamjob/savepoints", "s3://archive"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
    assert {"POD_NAMESPACE", "POD_NAME"} <= env.keys()
    assert args.network_policy is False
    assert args.rest_namespace == ["tools", "ci"]
    assert args.metrics_namespace == ["monitoring"]
    assert args.allow_privileged_pods is True
    # each savepoint volume mounted where the flag says
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/data"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "streamjob-data"
    }
    assert mounts["/archive"]["subPath"] == "savepoints"
    assert volumes[mounts["/archive"]["name"]]["nfs"]["server"] == "nfs.example.com"


def test_the_rendered_command_line_runs_the_operator(
    helm: str, kube: KubeEmulator, kubeconfig: Path, tmp_path: Path
) -> None:
    """The Deployment's command, args and downward-API env, run as a process against the
    Kubernetes emulator with the chart's CRD: it leads through the Lease the RBAC names,
    reconciles a StreamJob in its watched namespace and answers /healthz on the metrics
    port. (A SIGTERM's Lease hand-back: tests/operator/test_leadership.py.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    docs = render(helm, "--set", f"metrics.port={port}", "--set", "watchNamespaces={team-a}")
    for namespace in (NAMESPACE, "team-a"):
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kube.apply_crd(one(docs, "CustomResourceDefinition"))
    container = operator_container(docs)
    pod = {"metadata.name": "streamjob-operator-7d9f-x2x4q", "metadata.namespace": NAMESPACE}
    env = {e["name"]: pod[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container["env"]}
    [command] = container["command"]
    executable = Path(sys.executable).parent / command  # the console script, as in the image
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(executable), *_expand(container["args"], env)],
            env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def holder() -> str:
            lease = kube.get("coordination.k8s.io/v1", "leases", RELEASE, NAMESPACE)
            return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

        kube.wait_for(lambda: holder().startswith(f"{env['POD_NAME']}_"), timeout=30,
                      what="the operator to lead")  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.status == 200
            assert json.loads(answer.read()) == {"status": "ok", "leader": True}
        kube.create({
            "apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.KIND,
            "metadata": {"name": "clicks", "namespace": "team-a"},
            "spec": {"image": "streamjob:dev", "job": {"entrypoint": "examples.clickstream"},
                     "savepoints": {"directory": "/data/savepoints"}},
        })  # fmt: skip
        kube.wait_for(
            lambda: kube.get("apps/v1", "deployments", "clicks-jobmanager", "team-a"),
            timeout=30,
            what="the StreamJob's JobManager Deployment",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\noperator log:\n{log.read_text()[-4000:]}") from e
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_the_pod_is_locked_down(helm: str) -> None:
    docs = render(helm)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = operator_container(docs)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (10001, 10001)
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # the read-only root leaves /tmp (HOME, working directory) writable
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert container["resources"]["limits"] == {"memory": "512Mi"}


def test_probes_ask_healthz_on_the_metrics_port(helm: str, values_args: tuple[str, ...]) -> None:
    container = operator_container(render(helm, *values_args))
    port = 9090 if values_args else 8080
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert f"--metrics-port={port}" in container["args"]


def test_replicas_spread_over_nodes_softly_and_a_budget_keeps_one(helm: str) -> None:
    docs = render(helm)
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "streamjob-operator",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [spread] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": selector}
    budget = one(docs, "PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    single = render(helm, *MINIMAL)
    assert not any(d["kind"] == "PodDisruptionBudget" for d in single)
    assert "topologySpreadConstraints" not in one(single, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("release", "fullname"),
    [
        ("streamjob-operator", "streamjob-operator"),
        ("prod-streamjob-operator", "prod-streamjob-operator"),
        ("streamjob", "streamjob-streamjob-operator"),
    ],
)
def test_names_and_labels(helm: str, release: str, fullname: str) -> None:
    docs = render(helm, release=release)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "streamjob-operator"
        assert labels["app.kubernetes.io/instance"] == release
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "streamjob-operator-0.1.0"
    assert one(docs, "Deployment")["metadata"]["name"] == fullname
    assert one(docs, "ServiceAccount")["metadata"]["name"] == fullname


def test_notes_say_what_to_do_next(helm: str) -> None:
    done = run_helm(
        helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.partition("NOTES:\n")[2]
    assert f"kubectl -n {NAMESPACE} get pods -l app.kubernetes.io/instance={RELEASE}" in notes
    assert "kubectl apply -f examples/storage.yaml -f examples/streamjob-stateless.yaml" in notes
    assert "kubectl get sj -w" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-metrics 8080" in notes
    for example in ("storage.yaml", "streamjob-stateless.yaml"):
        assert (ROOT / "examples" / example).is_file(), f"NOTES.txt names examples/{example}"
    # the image NOTES names is the one the examples use (and the chart's own default)
    (image,) = {
        doc["spec"]["image"]
        for path in (ROOT / "examples").glob("streamjob-*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "StreamJob"
    }
    named = re.findall(r"the examples use\s+(\S+?)\s", notes)
    assert named == [image], named
    assert f"docker build -t {image} ." in notes


def _leaves(values: Doc, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths.extend(_leaves(value, f"{path}."))
        else:
            paths.append(path)
    return paths


def test_the_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z.]+)` \|", readme, flags=re.MULTILINE))
    values = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    undocumented = [
        v for v in values if not any(v == d or v.startswith(f"{d}.") for d in documented)
    ]
    assert undocumented == []
    unknown = [d for d in documented if not any(v == d or v.startswith(f"{d}.") for v in values)]
    assert unknown == []


def test_the_operators_usage_names_the_command_the_chart_runs(helm: str) -> None:
    deployment = next(d for d in render(helm) if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["streamjob-operator"]
    usage = operator_main.parser().format_usage()
    assert usage.startswith("usage: streamjob-operator "), usage


def test_the_troubleshooting_commands_name_the_real_lease_and_finalizer(helm: str) -> None:
    """The README's Troubleshooting says how to drop the Lease a `helm uninstall` leaves and
    the finalizer that holds a StreamJob with no operator: with the names the chart and the
    operator really use (the README installs the release `streamjob` in `streamjob`)."""
    readme = (ROOT / "README.md").read_text()
    assert "helm install streamjob charts/streamjob-operator -n streamjob" in readme
    container = operator_container(render(helm, release="streamjob"))
    (lease_flag,) = [a for a in container["args"] if a.startswith("--lease-name=")]
    lease = lease_flag.partition("=")[2]
    assert f"kubectl delete lease -n streamjob {lease}`" in readme, lease
    assert f"finalizer `{handlers.FINALIZER}`" in readme
    assert """-p '{"metadata":{"finalizers":null}}'""" in readme
