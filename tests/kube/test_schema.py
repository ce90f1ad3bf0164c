"""Custom resources through their CRD's structural schema and CEL rules, as the real API
server admits them: every StreamJob manifest the project ships is accepted, and the rules
refuse what they should, with the real server's messages."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from streamjob_operator.api import crd as crd_module
from tests.kube import KubeEmulator
from tests.kube.fixtures import crd

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
Obj = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
STREAMJOBS = "/apis/streamjob.dev/v1alpha1/namespaces/default/streamjobs"
GROUP = "schema.test.dev"
WIDGETS = f"/apis/{GROUP}/v1/namespaces/default/widgets"
MERGE = "application/merge-patch+json"


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


async def request(
    kube: KubeEmulator,
    method: str,
    path: str,
    body: object,
    *,
    field_validation: str | None = "Strict",
    content_type: str = "application/json",
) -> tuple[int, Obj, list[str]]:
    """One request as kubectl sends it (fieldValidation=Strict by default): the status, the
    body and the Warning headers."""
    params = {"fieldValidation": field_validation} if field_validation else {}
    async with (
        aiohttp.ClientSession(base_url=kube.url) as session,
        session.request(
            method,
            path,
            params=params,
            data=json.dumps(body),
            headers={"Content-Type": content_type},
        ) as response,
    ):
        answer: Obj = await response.json()
        return response.status, answer, response.headers.getall("Warning", [])


def create(kube: KubeEmulator, path: str, obj: Obj, **kwargs: Any) -> tuple[int, Obj, list[str]]:
    return run(request(kube, "POST", path, obj, **kwargs))


@pytest.fixture
def streamjob_kube(kube: KubeEmulator) -> KubeEmulator:
    """The emulator serving StreamJobs from the CRD the chart installs."""
    kube.apply_crd(crd_module.build())
    return kube


def streamjob(**spec: Any) -> Obj:
    base: Obj = {"image": "streamjob:0.1.0", "job": {"entrypoint": "examples.clickstream"}}
    return {
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": "job"},
        "spec": {**base, **spec},
    }


# ---------------------------------------------------------------------- what the project ships


def _readme_streamjobs(path: Path) -> list[Obj]:
    """The StreamJob manifests in a Markdown file's ```yaml blocks."""
    blocks = re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S)
    docs = [d for block in blocks for d in yaml.safe_load_all(block) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") == "StreamJob"]


def _named_files() -> set[Path]:
    """The example files the READMEs, the chart's README and its NOTES.txt tell users to
    apply (`kubectl apply -f examples/...`)."""
    texts = [
        ROOT / "README.md",
        ROOT / "charts/streamjob-operator/README.md",
        ROOT / "charts/streamjob-operator/templates/NOTES.txt",
    ]
    named = {m for t in texts for m in re.findall(r"examples/[\w.-]+\.yaml", t.read_text())}
    return {ROOT / n for n in named}


def shipped() -> list[tuple[str, Obj]]:
    manifests: list[tuple[str, Obj]] = []
    for path in sorted({*ROOT.glob("examples/*.yaml"), *_named_files()}):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                manifests.append((str(path.relative_to(ROOT)), doc))
    for path in (ROOT / "README.md", ROOT / "charts/streamjob-operator/README.md"):
        manifests += [(path.name, d) for d in _readme_streamjobs(path)]
    return manifests


def test_the_readmes_and_notes_name_only_examples_that_exist() -> None:
    named = _named_files()
    assert ROOT / "examples/streamjob-stateless.yaml" in named  # what NOTES.txt tells users
    assert all(p.is_file() for p in named), sorted(map(str, named))
    assert sum(1 for _, d in shipped() if d.get("kind") == "StreamJob") >= 5


def test_every_shipped_manifest_is_accepted_without_warnings(
    streamjob_kube: KubeEmulator,
) -> None:
    """As `kubectl apply` (fieldValidation=Strict) against the real CRD: the stateless
    example leaves savepoints out, which the CRD's CEL rules once could not read."""
    for origin, manifest in shipped():
        plural = {"StreamJob": "streamjobs", "PersistentVolumeClaim": "persistentvolumeclaims"}
        assert manifest["kind"] in plural, origin
        path = (
            STREAMJOBS
            if manifest["kind"] == "StreamJob"
            else "/api/v1/namespaces/default/persistentvolumeclaims"
        )
        streamjob_kube.delete(
            manifest["apiVersion"],
            plural[manifest["kind"]],
            manifest["metadata"]["name"],
            "default",
        )
        status, body, warnings = create(streamjob_kube, path, manifest)
        assert (status, warnings) == (201, []), (origin, body)


def test_left_out_sections_are_defaulted_field_by_field(streamjob_kube: KubeEmulator) -> None:
    manifest = streamjob(job={"entrypoint": "examples.clickstream", "upgradeMode": "stateless"})
    status, body, _ = create(streamjob_kube, STREAMJOBS, manifest)
    assert status == 201, body
    spec = body["spec"]
    assert spec["jobManager"] == {"replicas": 1, "resources": {"cpu": "1", "memory": "1Gi"}}
    assert spec["savepoints"] == {"historyMaxCount": 5}
    assert spec["job"]["parallelism"] == 1
    assert spec["checkpointing"]["interval"] == "10s"
    assert "status" not in body


def test_the_crd_without_section_defaults_refuses_a_spec_that_leaves_them_out(
    kube: KubeEmulator,
) -> None:
    """Bug 1 as the real server showed it: the rules read sections that are not there."""
    old = crd_module.build()
    spec_schema = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for section in spec_schema["properties"].values():
        if section.get("default") == {}:
            del section["default"]
    kube.apply_crd(old)
    manifest = yaml.safe_load((ROOT / "examples/streamjob-stateless.yaml").read_text())
    status, body, _ = create(kube, STREAMJOBS, manifest)
    assert status == 422, body
    assert body["reason"] == "Invalid"
    assert (
        'spec: Invalid value: "object": no such key: savepoints evaluating rule: '
        "savepoints.interval needs savepoints.directory" in body["message"]
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"jobManager": {"replicas": 2}},
            'spec: Invalid value: "object": jobManager.replicas > 1 needs'
            " highAvailability.enabled: true",
        ),
        (
            {"savepoints": {"interval": "1h"}},
            'spec: Invalid value: "object": savepoints.interval needs savepoints.directory',
        ),
        (
            {"job": {"entrypoint": "x", "parallelism": 3}, "taskManager": {"slots": 2}},
            'spec: Invalid value: "object": job.parallelism needs at least that many slots',
        ),
        (
            {"job": {"entrypoint": "x", "parallelism": "two"}},
            'spec.job.parallelism: Invalid value: "string": spec.job.parallelism in body must'
            ' be of type integer: "string"',
        ),
        (
            {"job": {"entrypoint": "x", "parallelism": 0}},
            "spec.job.parallelism: Invalid value: 0: spec.job.parallelism in body should be"
            " greater than or equal to 1",
        ),
        (
            {"job": {"entrypoint": "x", "upgradeMode": "hot"}},
            'spec.job.upgradeMode: Unsupported value: "hot": supported values: "savepoint",'
            ' "last-state", "stateless"',
        ),
        (
            {"imagePullPolicy": "Sometimes"},
            'spec.imagePullPolicy: Invalid value: "Sometimes": spec.imagePullPolicy in body'
            " should match '^(Always|IfNotPresent|Never)$'",
        ),
        ({"job": {"args": []}}, "spec.job.entrypoint: Required value"),
    ],
)
def test_the_schema_and_rules_refuse_a_bad_spec_with_the_real_servers_message(
    streamjob_kube: KubeEmulator, spec: Obj, message: str
) -> None:
    manifest = streamjob(**{"savepoints": {"directory": "/sp"}, **spec})
    status, body, _ = create(streamjob_kube, STREAMJOBS, manifest)
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert body["message"].startswith('StreamJob.streamjob.dev "job" is invalid: '), body
    assert message in body["message"]
    assert streamjob_kube.get("streamjob.dev/v1alpha1", "streamjobs", "job", "default") is None


def test_unknown_fields_are_pruned_with_a_warning_or_refused_when_strict(
    streamjob_kube: KubeEmulator,
) -> None:
    manifest = streamjob(savepoints={"directory": "/sp", "keep": 3}, jobManger={"replicas": 2})
    status, body, _ = create(streamjob_kube, STREAMJOBS, manifest)
    assert status == 400, body
    assert body["reason"] == "BadRequest"
    assert body["message"] == (
        'StreamJob in version "v1alpha1" cannot be handled as a StreamJob: strict decoding'
        ' error: unknown field "spec.savepoints.keep", unknown field "spec.jobManger"'
    )
    status, body, warnings = create(streamjob_kube, STREAMJOBS, manifest, field_validation=None)
    assert status == 201, body
    assert warnings == [
        '299 - "unknown field \\"spec.savepoints.keep\\""',
        '299 - "unknown field \\"spec.jobManger\\""',
    ]
    assert "jobManger" not in body["spec"]
    assert body["spec"]["savepoints"] == {"directory": "/sp", "historyMaxCount": 5}
    # a status write is pruned too: only the fields the CRD's status schema declares stay
    stored = streamjob_kube.patch(
        "streamjob.dev/v1alpha1",
        "streamjobs",
        "job",
        {"status": {"lifecycleState": "CREATED", "bogus": 1}},
        namespace="default",
        subresource="status",
    )
    assert "bogus" not in stored["status"]


def test_a_patch_is_checked_like_a_create(streamjob_kube: KubeEmulator) -> None:
    assert create(streamjob_kube, STREAMJOBS, streamjob(savepoints={"directory": "/sp"}))[0] == 201
    patch = {"spec": {"savepoints": {"directory": None, "interval": "1h"}}}
    status, body, _ = run(
        request(streamjob_kube, "PATCH", f"{STREAMJOBS}/job", patch, content_type=MERGE)
    )
    assert status == 422, body
    assert "savepoints.interval needs savepoints.directory" in body["message"]
    stored = streamjob_kube.get("streamjob.dev/v1alpha1", "streamjobs", "job", "default")
    assert stored is not None
    assert stored["spec"]["savepoints"]["directory"] == "/sp"


# ---------------------------------------------------------------------- rules of any CRD


def widget_crd(validations: list[Obj], status: Obj | None = None) -> Obj:
    definition = crd(GROUP, "widgets", "Widget")
    definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": validations,
                "properties": {
                    "size": {"type": "integer", "default": 1},
                    "name": {"type": "string"},
                    "items": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["key"],
                        "items": {
                            "type": "object",
                            "required": ["key"],
                            "properties": {
                                "key": {"type": "string"},
                                "value": {
                                    "type": "string",
                                    "x-kubernetes-validations": [
                                        {"rule": "self == oldSelf", "message": "immutable"}
                                    ],
                                },
                            },
                        },
                    },
                },
            },
            "status": status or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return definition


def widget(**spec: Any) -> Obj:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_transition_rules_run_on_updates_only_and_message_expressions_speak(
    kube: KubeEmulator,
) -> None:
    kube.apply_crd(
        widget_crd(
            [
                {
                    "rule": "self.size >= oldSelf.size",
                    "messageExpression": "'size may not shrink from ' + string(oldSelf.size)",
                },
                {
                    "rule": "!has(self.name) || self.name.startsWith('w')",
                    "fieldPath": ".name",
                    "reason": "FieldValueForbidden",
                    "message": "names start with w",
                },
                {
                    "rule": "oldSelf.hasValue() || self.size < 100",
                    "optionalOldSelf": True,
                    "message": "a new widget is small",
                },
            ]
        )
    )
    assert create(kube, WIDGETS, widget(size=100))[0] == 422  # optionalOldSelf: on create too
    status, body, _ = create(kube, WIDGETS, widget(items=[{"key": "a", "value": "1"}]))
    assert status == 201, body
    assert body["spec"]["size"] == 1  # defaulted
    patches: list[tuple[Obj, str | None]] = [
        ({"size": 0}, 'spec: Invalid value: "object": size may not shrink from 1'),
        ({"name": "x"}, "spec.name: Forbidden: names start with w"),
        ({"items": [{"key": "a", "value": "2"}]}, 'spec.items[0].value: Invalid value: "string"'),
        ({"items": [{"key": "b", "value": "2"}]}, None),  # a new key: no old value to compare
        ({"size": 100}, None),  # an update: optionalOldSelf has a value
    ]
    for patch, message in patches:
        status, body, _ = run(
            request(kube, "PATCH", f"{WIDGETS}/w", {"spec": patch}, content_type=MERGE)
        )
        if message is None:
            assert status == 200, (patch, body)
        else:
            assert status == 422, (patch, body)
            assert message in body["message"], body["message"]
            causes = body["details"]["causes"]
            assert causes[0]["field"] == message.split(":")[0]


def test_a_crd_whose_rule_does_not_compile_is_refused(kube: KubeEmulator) -> None:
    definition = copy.deepcopy(widget_crd([{"rule": "self.size >"}]))
    status, body, _ = create(
        kube, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", definition
    )
    assert status == 422, body
    assert "x-kubernetes-validations[0].rule" in body["message"]
    assert "compilation failed" in body["message"]
