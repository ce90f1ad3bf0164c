"""docs/streamjob-reference.md is generated from the models and says what the CRD enforces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

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


EXAMPLE = Path(__file__).parents[2] / "examples" / "streamjob-complete.yaml"
README = Path(__file__).parents[2] / "README.md"


def _set_paths(node: Any, prefix: str) -> set[str]:
    if not isinstance(node, dict):
        return set()
    found = set()
    for name, child in node.items():
        found.add(f"{prefix}{name}")
        if name != "podTemplate":
            found |= _set_paths(child, f"{prefix}{name}.")
    return found


def test_the_complete_example_sets_every_field_and_the_readme_shows_it() -> None:
    text = EXAMPLE.read_text()
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    spec = crd.schema_of(models.StreamJobSpec)
    fields = {path for path, _ in _fields(spec, "spec.")}
    fields -= {p for p in fields if ".podTemplate." in p or p.startswith("spec.config.")}
    unset = fields - _set_paths(doc, "")
    # commented out: first deploy only, and the other restart strategies' settings
    commented = {
        "spec.job.initialSavepointPath",
        "spec.restartStrategy.attempts",
        "spec.restartStrategy.delay",
        "spec.restartStrategy.maxFailuresPerInterval",
        "spec.restartStrategy.failureRateInterval",
    }
    assert unset == commented
    for path in commented:
        assert path.rsplit(".", 1)[1] in text
    assert text in README.read_text(), "README.md must show examples/streamjob-complete.yaml"
