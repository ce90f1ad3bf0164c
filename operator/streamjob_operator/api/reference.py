"""The StreamJob field reference (Markdown), generated from the same schema as the CRD.

``python -m streamjob_operator.api.reference > docs/streamjob-reference.md``
regenerates the committed reference; a test fails when the two differ, so the
reference says what the API server enforces: types, defaults, enums, bounds, the
cross-field rules, and each field's ``kubectl explain`` description.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from streamjob_operator.api import crd, durations, models

Schema = dict[str, Any]

_INTRO = """\
# StreamJob reference

`apiVersion: {group}/{version}`, `kind: {kind}` (short name `{short}`). Generated from the
pydantic models in `operator/streamjob_operator/api/models.py` by
`python -m streamjob_operator.api.reference`; `kubectl explain streamjob.spec` shows the
same descriptions. Durations are written like `500ms`, `10s`, `5m`, `1h`.
"""


def _type(node: Schema) -> str:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if node.get("pattern") == durations.PATTERN:
        return "duration"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type(node['additionalProperties'])}"
    return kind


def _constraints(node: Schema) -> str:
    parts: list[str] = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node and "maximum" in node:
        parts.append(f"{node['minimum']}..{node['maximum']}")
    elif "minimum" in node:
        parts.append(f"≥ {node['minimum']}")
    elif "maximum" in node:
        parts.append(f"≤ {node['maximum']}")
    if "minLength" in node:
        parts.append("not empty" if node["minLength"] == 1 else f"length ≥ {node['minLength']}")
    if "pattern" in node and node["pattern"] != durations.PATTERN:
        parts.append(f"matches `{node['pattern']}`")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(node: Schema, prefix: str, required: frozenset[str]) -> Iterator[str]:
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        is_section = "properties" in child
        # a section's own default ({}) says nothing its fields do not
        if "default" in child and not is_section:
            default = f"`{json.dumps(child['default'])}`"
        elif name in required:
            default = "**required**"
        else:
            default = ""
        details = _constraints(child)
        description = child.get("description", "")
        if details:
            description = f"{description} ({details})" if description else details
        yield (f"| `{path}` | {_type(child)} | {_cell(default)} | {_cell(description)} |")
        if is_section:
            yield from _rows(child, f"{path}.", frozenset(child.get("required", ())))


def _table(node: Schema, prefix: str) -> list[str]:
    return [
        "| Field | Type | Default | Description |",
        "|---|---|---|---|",
        *_rows(node, prefix, frozenset(node.get("required", ()))),
    ]


def render() -> str:
    spec = crd.schema_of(models.StreamJobSpec)
    status = crd.schema_of(models.StreamJobStatus)
    lines = [
        _INTRO.format(
            group=models.GROUP,
            version=models.VERSION,
            kind=models.KIND,
            short=models.SHORT_NAMES[0],
        ),
        "## spec",
        "",
        *_table(spec, "spec."),
        "",
        "Cross-field rules (checked by the API server on apply, and by the operator):",
        "",
        *(f"- {rule['message']} (`{rule['rule']}`)" for rule in models.SPEC_VALIDATIONS),
        "",
        "## status",
        "",
        "Written by the operator only; `kubectl get sj` shows the lifecycle state, the job",
        "state, the last checkpoint's age and the parallelism.",
        "",
        *_table(status, "status."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
