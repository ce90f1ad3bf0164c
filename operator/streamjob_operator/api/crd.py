"""Generates the StreamJob CustomResourceDefinition from the pydantic models.

``python -m streamjob_operator.api.crd > crds/streamjobs.streamjob.dev.yaml``
regenerates the committed CRD; a test fails when the two differ.

Pydantic's JSON Schema becomes a Kubernetes *structural* schema: references are
inlined, ``Optional`` becomes ``nullable``, titles and ``additionalProperties:
false`` go (the API server prunes unknown fields), and free-form pod templates
keep ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import pydantic
import yaml

from streamjob_operator.api import models

Schema = dict[str, Any]


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


def schema_of(model: type[pydantic.BaseModel]) -> Schema:
    raw = model.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    return dict(_structural(raw, defs))


def build() -> dict[str, Any]:
    spec = schema_of(models.StreamJobSpec)
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


if __name__ == "__main__":
    sys.stdout.write(render())
