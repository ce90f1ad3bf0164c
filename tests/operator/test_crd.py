"""The StreamJob CRD is generated from the pydantic models and must not drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from streamjob_operator.api import crd, durations, models

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "streamjobs.streamjob.dev.yaml"


def test_the_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == crd.render(), (
        "crds/ is stale: regenerate it (and the Helm chart's copy) with"
        " `uv run python -m streamjob_operator.api.crd --write`"
    )


def walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(walk(value))
    return found


def test_the_schema_is_structural_with_names_columns_and_status() -> None:
    doc = yaml.safe_load(COMMITTED.read_text())
    version = doc["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for node in walk(schema):
        assert "$ref" not in node
        assert "anyOf" not in node
        assert "title" not in node
        assert node.get("additionalProperties") is not False
    spec = schema["properties"]["spec"]
    pod_template = spec["properties"]["jobManager"]["properties"]["podTemplate"]
    assert pod_template["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["job"]["properties"]["upgradeMode"]["enum"] == [
        "savepoint", "last-state", "stateless"
    ]  # fmt: skip
    assert any("highAvailability" in v["rule"] for v in spec["x-kubernetes-validations"])
    assert doc["spec"]["names"]["shortNames"] == ["sj"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Lifecycle", "Job", "Last Checkpoint", "Parallelism", "Age"]
    assert "lifecycleState" in schema["properties"]["status"]["properties"]


def test_a_minimal_manifest_gets_the_documented_defaults() -> None:
    spec = models.StreamJobSpec.model_validate(
        {"image": "streamjob:dev", "job": {"entrypoint": "examples.clickstream"}}
    )
    assert spec.job.upgradeMode is models.UpgradeMode.SAVEPOINT
    assert spec.taskManager.slots == 1
    assert durations.to_ms(spec.checkpointing.interval) == 10_000
    assert json.loads(spec.model_dump_json())["job"]["state"] == "running"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"job": {"entrypoint": "x", "parallelism": 0}}, "parallelism"),
        ({"job": {"entrypoint": "x", "upgradeMode": "sometimes"}}, "upgradeMode"),
        ({"job": {"entrypoint": "x"}, "checkpointing": {"interval": "10 seconds"}}, "interval"),
        ({"job": {"entrypoint": "x"}, "unknownField": 1}, "unknownField"),
    ],
)
def test_invalid_fields_are_refused_naming_them(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        models.StreamJobSpec.model_validate({"image": "streamjob:dev", **patch})


def test_durations() -> None:
    assert [durations.to_ms(d) for d in ("500ms", "10s", "5m", "1h")] == [
        500, 10_000, 300_000, 3_600_000
    ]  # fmt: skip
    with pytest.raises(ValueError, match="500ms, 10s, 5m or 1h"):
        durations.to_ms("1d")


def test_every_field_kubectl_explain_shows_has_a_description() -> None:
    """`kubectl explain streamjob.spec` (and .status, and every field under them) says what
    the field is: nothing prints an empty DESCRIPTION."""
    doc = yaml.safe_load(COMMITTED.read_text())
    root = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []

    def visit(node: dict[str, Any], path: str) -> None:
        if not node.get("description"):
            missing.append(path)
        for name, child in (node.get("properties") or {}).items():
            visit(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict) and "properties" in node["items"]:
            for name, child in node["items"]["properties"].items():
                visit(child, f"{path}[].{name}")

    for section in ("spec", "status"):
        visit(root["properties"][section], section)
    assert missing == [], missing
