"""The OpenAPI 3.1 description of the JobManager REST API, built from the models.

Served at ``GET /openapi.json``; ``docs/openapi.json`` in the repository is
this document, and a test fails when the two drift apart.
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic.json_schema import models_json_schema

from streamjob_runtime import __version__
from streamjob_runtime.api import models

Route = tuple[str, str, str, type[pydantic.BaseModel] | None, int, type[pydantic.BaseModel] | None]

# method, path, summary, request body, success status, success body
ROUTES: list[Route] = [
    ("get", "/overview", "Cluster overview", None, 200, models.ClusterOverview),
    ("get", "/taskmanagers", "TaskManagers", None, 200, models.TaskManagerList),
    ("get", "/jobs", "List jobs", None, 200, models.JobList),
    ("post", "/jobs", "Submit a job", models.JobSubmission, 202, models.JobSubmitted),
    ("get", "/jobs/{job_id}", "Job details", None, 200, models.JobDetails),
    ("patch", "/jobs/{job_id}", "Cancel a job (?mode=cancel)", None, 202, None),
    (
        "get",
        "/jobs/{job_id}/checkpoints",
        "Checkpoint statistics",
        None,
        200,
        models.CheckpointingStatistics,
    ),
    ("get", "/jobs/{job_id}/exceptions", "Failure history", None, 200, models.JobExceptions),
    ("get", "/jobs/{job_id}/config", "Job configuration", None, 200, models.JobConfigInfo),
    (
        "get",
        "/jobs/{job_id}/savepoints",
        "Savepoint requests (newest first)",
        None,
        200,
        models.SavepointRequestList,
    ),
    (
        "post",
        "/jobs/{job_id}/savepoints",
        "Trigger a savepoint (optionally cancel after)",
        models.SavepointTriggerRequest,
        202,
        models.TriggerResponse,
    ),
    (
        "get",
        "/jobs/{job_id}/savepoints/{request_id}",
        "Savepoint status",
        None,
        200,
        models.SavepointInfo,
    ),
    (
        "post",
        "/jobs/{job_id}/stop",
        "Stop with a savepoint (optionally drain)",
        models.StopRequest,
        202,
        models.TriggerResponse,
    ),
]

PLAIN: list[tuple[str, str]] = [
    ("/metrics", "Prometheus metrics (text exposition format)"),
    ("/healthz", "Liveness"),
    ("/readyz", "Readiness: the leader, or a standby ready to take over (the body names the role)"),
    ("/", "Web UI (HTML)"),
]


def document() -> dict[str, Any]:
    used = {m for route in ROUTES for m in (route[3], route[5]) if m is not None}
    used.add(models.ErrorResponse)
    _, schemas = models_json_schema(
        [
            (m, "validation" if m in {r[3] for r in ROUTES} else "serialization")
            for m in sorted(used, key=lambda m: m.__name__)
        ],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model: type[pydantic.BaseModel]) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {
        "description": "Error: what went wrong and what to do",
        "content": {"application/json": {"schema": ref(models.ErrorResponse)}},
    }
    unauthorized = {**error, "description": "No bearer token: send Authorization: Bearer <token>"}
    forbidden = {
        **error,
        "description": "A wrong token, or a job file or directory outside the allowed roots",
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, status, response in ROUTES:
        op: dict[str, Any] = {"summary": summary, "responses": {}}
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(request)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if response is not None:
            ok["content"] = {"application/json": {"schema": ref(response)}}
        op["responses"][str(status)] = ok
        if request is not None:
            op["responses"]["400"] = error
        if params:
            op["responses"]["404"] = error
        if method in ("post", "patch") and params:
            op["responses"]["409"] = error
        op["responses"]["401"] = unauthorized
        op["responses"]["403"] = forbidden
        paths.setdefault(path, {})[method] = op
    for path, summary in PLAIN:
        responses = {"200": {"description": "OK"}, "401": unauthorized, "403": forbidden}
        paths[path] = {"get": {"summary": summary, "responses": responses}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamjob JobManager REST API", "version": __version__},
        "paths": paths,
        # Every endpoint, over HTTPS; /metrics, /healthz and /readyz are also served
        # without a token on the plain metrics port.
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the JobManager's REST token (--rest-token-file)",
                }
            },
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(document(), indent=2, sort_keys=True))
