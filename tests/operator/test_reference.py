"""docs/streamjob-reference.md is generated from the models and says what the CRD enforces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamjob_operator.api import crd, models, reference

DOC = Path(__file__).parents[2] / "docs" / "streamjob-reference.md"


def test_the_committed_reference_is_generated_from_the_models() -> None:
    assert DOC.read_text() == reference.render(), (
        "docs/streamjob-reference.md is stale: run"
        " `uv run python -m streamjob_operator.api.reference > docs/streamjob-reference.md`"
    )


def _fields(node: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, child in node.get("properties", {}).items():
        found.append((f"{prefix}{name}", child))
        found += _fields(child, f"{prefix}{name}.")
    return found


def test_every_spec_field_is_described_and_listed() -> None:
    text = reference.render()
    fields = _fields(crd.schema_of(models.StreamJobSpec), "spec.")
    assert len(fields) > 50
    undocumented = [path for path, node in fields if not node.get("description")]
    assert undocumented == [], f"fields without a description (kubectl explain): {undocumented}"
    for path, _ in fields:
        assert f"| `{path}` |" in text
    for rule in models.SPEC_VALIDATIONS:
        assert rule["message"] in text


def test_durations_read_as_durations_and_bounds_as_ranges() -> None:
    text = reference.render()
    row = next(line for line in text.splitlines() if "`spec.checkpointing.interval`" in line)
    assert row.startswith('| `spec.checkpointing.interval` | duration | `"10s"` |')
    row = next(line for line in text.splitlines() if "`spec.job.parallelism`" in line)
    assert "(1..32768)" in row
    row = next(line for line in text.splitlines() if "`spec.job.entrypoint`" in line)
    assert "**required**" in row
