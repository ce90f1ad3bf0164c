"""The example manifests in examples/ are valid and runnable as the image ships them.

Every StreamJob validates against the generated CRD's openAPIV3Schema (with the API
server's structural-schema rules: unknown fields refused unless
``x-kubernetes-preserve-unknown-fields``; the CEL rules are checked through the
operator's twins of them), against the pydantic model and against the operator's own
validation; its entrypoint is a file the image has (mapped back to the repository
through the Dockerfile's COPY and PYTHONPATH) and builds with the manifest's args; the
children the operator would render from it validate with kubernetes-validate --strict;
and its checkpoints, savepoints and absolute-path args are on a PersistentVolumeClaim
that the examples define and that every JobManager and TaskManager pod mounts. Every
other object validates with kubernetes-validate --strict.
"""

from __future__ import annotations

import copy
import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pydantic
import pytest
import yaml

from streamjob_operator.api import models
from streamjob_operator.desired import children, target
from streamjob_operator.planning import validation
from streamjob_runtime import config, jobfile
from tests.delivery import dockerfile

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "streamjobs.streamjob.dev.yaml"
MANIFESTS = sorted((ROOT / "examples").glob("*.yaml"))
API_VERSION = f"{models.GROUP}/{models.VERSION}"
CONTAINERS = {"Deployment": ("jobmanager", "taskmanager")}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"streamjob:{VERSION}"  # the chart's default image (its appVersion) too


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def structural(node: Any) -> Any:
    """The CRD schema as JSON Schema, with the API server's structural rules."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False  # the API server prunes (kubectl refuses) unknowns
    if node.get("type") == "object" and "properties" not in node and preserve is None:
        out.pop("additionalProperties", None)  # metadata: free-form, checked by the server
    return out


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = structural(version["schema"]["openAPIV3Schema"])
    return schema


def image_files() -> tuple[dict[str, str], list[str]]:
    """The final stage's COPYs from the build context (image path -> repository path), and
    its PYTHONPATH."""
    final = dockerfile.parse((ROOT / "Dockerfile").read_text()).stages[-1]
    copies = {}
    for instruction in final.all("COPY"):
        if "from" not in instruction.flags:
            *sources, dest = instruction.words()
            for source in sources:
                copies[dest.rstrip("/")] = source
    return copies, [p for p in final.env().get("PYTHONPATH", "").split(":") if p]


def repository_file(entrypoint: str) -> Path | None:
    """The repository file the image holds at ``entrypoint`` (a path or a module)."""
    copies, pythonpath = image_files()
    if entrypoint.endswith(".py") or "/" in entrypoint:
        candidates = [entrypoint]
    else:
        module = entrypoint.replace(".", "/")
        candidates = [
            posixpath.join(base, module + tail) for base in pythonpath
            for tail in (".py", "/__init__.py")
        ]  # fmt: skip
    for candidate in candidates:
        for dest, source in copies.items():
            if candidate.startswith(dest + "/"):
                path = ROOT / source / candidate[len(dest) + 1 :]
                if path.is_file():
                    return path
    return None


def streamjob_problems(doc: dict[str, Any], claims: set[str]) -> list[str]:
    """What is wrong with a StreamJob manifest; empty when nothing is."""
    name = doc.get("metadata", {}).get("name", "?")
    found = [
        f"{name}: CRD schema: {'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft4Validator(crd_schema()).iter_errors(doc)
    ]
    if doc.get("apiVersion") != API_VERSION:
        found.append(f"{name}: apiVersion must be {API_VERSION}")
    if doc.get("spec", {}).get("image") != IMAGE:
        found.append(
            f"{name}: image must be {IMAGE}, as the README builds it and the chart runs it"
        )
    try:
        models.StreamJobSpec.model_validate(doc.get("spec"))
    except pydantic.ValidationError as e:
        found.append(f"{name}: pydantic: {e}")
    checked = validation.validate(doc.get("spec") or {})
    found += [f"{name}: operator: {error}" for error in checked.errors]
    if checked.spec is None:
        return found
    spec = checked.spec
    job_file = repository_file(spec.job.entrypoint)
    if job_file is None:
        found.append(f"{name}: entrypoint {spec.job.entrypoint} is not a file the image has")
    else:
        try:
            jobfile.load(str(job_file), list(spec.job.args), config.JobConfig())
        except jobfile.JobFileError as e:
            found.append(f"{name}: the job does not build with its args: {e}")
    job = target.StreamJob(name, "default", "00000000-0000-0000-0000-000000000000", spec)
    rendered = children.children(job, target.DeploymentTarget())
    for child in rendered:
        found += [f"{name}: rendered {problem}" for problem in kubernetes_problems(child)]
    shared = [spec.checkpointing.storage, spec.savepoints.directory]
    shared += [a.partition("=")[2] or a for a in spec.job.args]
    for path in {p for p in shared if p is not None and p.startswith("/")}:
        for deployment in (c for c in rendered if c["kind"] == "Deployment"):
            claim = _claim_at(deployment["spec"]["template"]["spec"], path)
            if claim not in claims:
                found.append(
                    f"{name}: {path} is not on a PersistentVolumeClaim of the examples in"
                    f" {deployment['metadata']['name']} (claim: {claim})"
                )
    return found


def _claim_at(pod: dict[str, Any], path: str) -> str | None:
    """The PVC mounted at (a parent of) ``path`` in the pod's streamjob container."""
    (container,) = [c for c in pod["containers"] if c["name"] in CONTAINERS["Deployment"]]
    mounts = [
        m for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]  # fmt: skip
    if not mounts:
        return None
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    for volume in pod.get("volumes", []):
        if volume["name"] == mount["name"]:
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            return str(claim) if claim is not None else None
    return None


def kubernetes_problems(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e.message}"]
    return []


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in documents(path)]


def claims_defined() -> set[str]:
    docs = all_documents()
    return {d["metadata"]["name"] for d in docs if d.get("kind") == "PersistentVolumeClaim"}


def test_the_examples_hold_the_three_upgrade_modes_and_the_volume() -> None:
    kinds = [doc["kind"] for doc in all_documents()]
    assert kinds.count("StreamJob") >= 3
    modes = {
        doc["spec"]["job"].get("upgradeMode", "savepoint")
        for doc in all_documents()
        if doc["kind"] == "StreamJob"
    }
    assert modes == {"savepoint", "last-state", "stateless"}
    assert claims_defined() == {"streamjob-data"}


def test_an_example_keeps_everything_on_s3_without_a_volume() -> None:
    """streamjob-s3.yaml: checkpoints, savepoints and output on S3, no volume in any pod,
    and the credentials from the Secret it ships, in every JobManager and TaskManager."""
    docs = documents(ROOT / "examples" / "streamjob-s3.yaml")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    (doc,) = [d for d in docs if d["kind"] == "StreamJob"]
    spec = models.StreamJobSpec.model_validate(doc["spec"])
    assert spec.checkpointing.storage.startswith("s3://")
    assert (spec.savepoints.directory or "").startswith("s3://")
    assert all(
        a.startswith("s3://") for a in (a.partition("=")[2] for a in spec.job.args) if "/" in a
    )
    job = target.StreamJob(
        "keyed-count-s3", "default", "00000000-0000-0000-0000-000000000000", spec
    )
    deployments = [
        c for c in children.children(job, target.DeploymentTarget()) if c["kind"] == "Deployment"
    ]
    assert len(deployments) == 2
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"]), pod["volumes"]
        (container,) = [c for c in pod["containers"] if c["name"] in CONTAINERS["Deployment"]]
        env = {e["name"]: e for e in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_example_object_is_valid(path: Path) -> None:
    claims = claims_defined()
    found = []
    for doc in documents(path):
        if doc.get("kind") == "StreamJob":
            found += streamjob_problems(doc, claims)
        else:
            found += kubernetes_problems(doc)
    assert found == []


def test_the_checks_fail_a_broken_streamjob() -> None:
    (doc,) = documents(ROOT / "examples" / "streamjob-savepoint-upgrade.yaml")
    broken = copy.deepcopy(doc)
    broken["spec"]["job"]["paralelism"] = 2  # a typo
    found = streamjob_problems(broken, claims_defined())
    assert any("CRD schema: spec.job: Additional properties" in p for p in found), found
    assert any("spec.job.paralelism is not a StreamJob field" in p for p in found), found

    broken = copy.deepcopy(doc)
    broken["spec"]["job"]["entrypoint"] = "/opt/streamjob/examples/no_such_job.py"
    broken["spec"]["checkpointing"]["storage"] = "/checkpoints"
    broken["spec"]["taskManager"]["podTemplate"]["spec"]["volumes"][0] = {
        "name": "data",
        "emptyDir": {},
    }
    found = streamjob_problems(broken, claims_defined())
    assert "keyed-count: entrypoint /opt/streamjob/examples/no_such_job.py is not a file the" \
        " image has" in found  # fmt: skip
    assert any("/checkpoints is not on a PersistentVolumeClaim" in p for p in found), found
    assert any(
        "/data/keyed-count/out is not on a PersistentVolumeClaim of the examples in"
        " keyed-count-taskmanager (claim: None)" in p
        for p in found
    ), found

    broken = copy.deepcopy(doc)
    broken["spec"]["job"]["args"] = ["out=/data/keyed-count/out", "keys=10"]
    found = streamjob_problems(broken, claims_defined())
    assert any("the job does not build with its args" in p and "multiple of 8" in p for p in found)

    broken = copy.deepcopy(doc)
    broken["spec"]["jobManager"]["replicas"] = 2
    found = streamjob_problems(broken, claims_defined())
    assert found == [
        "keyed-count: operator: jobManager.replicas > 1 needs highAvailability.enabled: true:"
        " correct the spec and apply again"
    ]


def test_the_checks_fail_a_broken_volume_claim() -> None:
    (claim,) = documents(ROOT / "examples" / "storage.yaml")
    claim["spec"]["accessModes"] = "ReadWriteOnce"  # not a list
    assert kubernetes_problems(claim) != []


def test_the_readmes_kubectl_selectors_pick_the_pods_of_every_colour() -> None:
    """The README's verify and log commands pick pods by label, not by Deployment name:
    after a blue-green switch the Deployments are NAME-blue-* or NAME-green-*."""
    readme = (ROOT / "README.md").read_text()
    assert "deploy/" not in readme  # a Deployment name misses the coloured ones
    selectors = re.findall(r"-l (app\.kubernetes\.io/instance=[\w./=,-]+)", readme)
    assert selectors, "the README's kubectl commands select pods by label"
    examples = {
        d["metadata"]["name"]: models.StreamJobSpec.model_validate(d["spec"])
        for d in all_documents()
        if d["kind"] == "StreamJob"
    }
    for selector in selectors:
        wanted = dict(pair.split("=", 1) for pair in selector.split(","))
        name = wanted["app.kubernetes.io/instance"].replace("NAME", "keyed-count")
        wanted["app.kubernetes.io/instance"] = name
        assert name in examples, selector  # a StreamJob the examples define
        job = target.StreamJob(
            name, "default", "00000000-0000-0000-0000-000000000000", examples[name]
        )
        for where in (
            target.DeploymentTarget(),
            target.DeploymentTarget(color=target.Color.BLUE),
            target.DeploymentTarget(color=target.Color.GREEN),
        ):
            pods = [
                m["spec"]["template"]["metadata"]["labels"]
                for m in children.children(job, where)
                if m["kind"] == "Deployment"
            ]
            matching = [p for p in pods if wanted.items() <= p.items()]
            assert len(matching) == 1, (selector, where, pods)
