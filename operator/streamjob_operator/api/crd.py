"""Generates the StreamJob CustomResourceDefinition from the pydantic models.

``python -m streamjob_operator.api.crd --write`` (from the repository root) regenerates
the committed CRD, ``crds/streamjobs.streamjob.dev.yaml``, and its copy in the Helm
chart, ``charts/streamjob-operator/files/``; tests fail when either differs. Without
``--write`` it prints the CRD.

Pydantic's JSON Schema becomes a Kubernetes *structural* schema: references are
inlined, ``Optional`` becomes ``nullable``, titles and ``additionalProperties:
false`` go (the API server prunes unknown fields), and free-form pod templates
keep ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from streamjob_operator.api import models

Schema = dict[str, Any]

FILE = "streamjobs.streamjob.dev.yaml"
# Where --write puts the CRD, relative to the repository root: the committed CRD and the
# chart's copy (Helm reads no file outside the chart).
TARGETS = (Path("crds") / FILE, Path("charts/streamjob-operator/files") / FILE)


def _structural(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {any_of} in a structural schema")
        inner = _structural(options[0], defs)
        node = {**inner, **node, "nullable": True}
        if node.get("default", ...) is None:
            del node["default"]
    node.pop("title", None)
    if isinstance(node.get("description"), str):
        # a model's docstring is wrapped; kubectl explain re-wraps the text itself
        node["description"] = " ".join(node["description"].split())
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        node["type"] = "object"
    result: Schema = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            result[key] = {k: _structural(v, defs) for k, v in value.items()}
        else:
            result[key] = _structural(value, defs)
    result.pop("$defs", None)
    return result


def _default_sections(node: Schema) -> None:
    """Give every optional sub-object (a section with its own fields, e.g. spec.savepoints)
    `default: {}`, recursively: the API server then fills in the section's field defaults
    too, so CEL rules and the operator may read `self.savepoints.directory` on a spec that
    leaves the section out (the API server defaults a field only when its parent exists)."""
    required = set(node.get("required") or [])
    for name, sub in (node.get("properties") or {}).items():
        if "properties" not in sub:
            continue
        if name not in required and "default" not in sub and not sub.get("nullable"):
            sub["default"] = {}
        _default_sections(sub)


def schema_of(model: type[pydantic.BaseModel]) -> Schema:
    raw = model.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    return dict(_structural(raw, defs))


def build() -> dict[str, Any]:
    spec = schema_of(models.StreamJobSpec)
    _default_sections(spec)
    spec["x-kubernetes-validations"] = models.SPEC_VALIDATIONS
    status = schema_of(models.StreamJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{models.PLURAL}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": models.SHORT_NAMES,
                "listKind": f"{models.KIND}List",
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Lifecycle",
                            "type": "string",
                            "jsonPath": ".status.lifecycleState",
                        },
                        {"name": "Job", "type": "string", "jsonPath": ".status.job.state"},
                        {
                            "name": "Last Checkpoint",
                            "type": "date",
                            "jsonPath": ".status.lastCheckpoint.time",
                        },
                        {
                            "name": "Parallelism",
                            "type": "integer",
                            "jsonPath": ".spec.job.parallelism",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A stream processing job run by the streamjob"
                            " operator: JobManager and TaskManager pods, savepoint-based"
                            " upgrades, suspend/resume, rollback.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m streamjob_operator.api.crd`; do not edit.\n"
    return header + yaml.safe_dump(build(), sort_keys=False, width=100)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m streamjob_operator.api.crd",
        description="Print the StreamJob CRD generated from the models, or --write it.",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help=f"write {' and '.join(map(str, TARGETS))} (run from the repository root)",
    )
    args = p.parse_args(argv)
    text = render()
    if not args.write:
        sys.stdout.write(text)
        return 0
    missing = [str(t.parent) for t in TARGETS if not t.parent.is_dir()]
    if missing:
        p.error(f"no {', '.join(missing)} here: run --write from the repository root")
    for target in TARGETS:
        target.write_text(text)
        print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
