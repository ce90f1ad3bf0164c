"""Is a spec one the operator can run? Errors are sentences a user can act on.

:func:`validate` checks a spec as the API server holds it: the schema (pydantic, as the
CRD's OpenAPI schema does, for resources written while an older CRD was installed),
the CRD's cross-field CEL rules (``models.SPEC_VALIDATIONS``, mirrored here rule for
rule so that planning refuses what the API server would), and what the API server
cannot check: absolute paths, duration relations, options shadowed by typed fields,
and pod templates asking for what only a trusted pod may have (privileged containers,
host namespaces and ports, hostPath volumes, added capabilities, root), refused unless
the operator allows privileged pods.
:func:`transition_errors` checks a change from the running spec to a new one.

An invalid spec is never acted on: planning records the errors and keeps the last
valid spec running.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from streamjob_operator.api import durations, models
from streamjob_operator.desired import jobmanager, podtemplate, submission, taskmanager

Rule = Callable[[models.StreamJobSpec], bool]

# The CEL rules of models.SPEC_VALIDATIONS, keyed by their rule text; a test checks
# that every CEL rule has its twin here.
CEL_TWINS: dict[str, Rule] = {
    "self.jobManager.replicas == 1 || self.highAvailability.enabled": (
        lambda s: s.jobManager.replicas == 1 or s.highAvailability.enabled
    ),
    "self.job.upgradeMode != 'savepoint' || has(self.savepoints.directory)": (
        lambda s: (
            s.job.upgradeMode is not models.UpgradeMode.SAVEPOINT
            or s.savepoints.directory is not None
        )
    ),
    "!has(self.savepoints.interval) || has(self.savepoints.directory)": (
        lambda s: s.savepoints.interval is None or s.savepoints.directory is not None
    ),
    "self.job.parallelism <= self.job.maxParallelism": (
        lambda s: s.job.parallelism <= s.job.maxParallelism
    ),
    "self.job.parallelism <= self.taskManager.replicas * self.taskManager.slots": (
        lambda s: s.job.parallelism <= s.taskManager.replicas * s.taskManager.slots
    ),
}


@dataclasses.dataclass(frozen=True)
class Validation:
    """A valid ``spec``, or the ``errors`` that make it invalid (then ``spec`` is None)."""

    spec: models.StreamJobSpec | None
    errors: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return self.spec is not None


def validate(raw: Mapping[str, Any], *, allow_privileged: bool = False) -> Validation:
    """``allow_privileged``: the operator lets pod templates have privileged settings."""
    try:
        spec = models.StreamJobSpec.model_validate(dict(raw))
    except pydantic.ValidationError as e:
        return Validation(None, tuple(_schema_error(error) for error in e.errors()))
    errors = tuple(spec_errors(spec, allow_privileged=allow_privileged))
    return Validation(None, errors) if errors else Validation(spec)


def _schema_error(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in ("spec", *error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"{where} is not a StreamJob field: remove it (see `kubectl explain streamjob.spec`)"
    if error["type"] == "missing":
        return f"{where} is required: set it"
    return f"{where}: {error['msg']} (got {error.get('input')!r}); correct it and apply again"


def spec_errors(spec: models.StreamJobSpec, *, allow_privileged: bool = False) -> list[str]:
    """Every rule ``spec`` breaks, in the order of the spec's fields."""
    errors = [
        f"{rule['message']}: correct the spec and apply again"
        for rule in models.SPEC_VALIDATIONS
        if not CEL_TWINS[rule["rule"]](spec)
    ]
    errors += _path_errors(spec)
    errors += _duration_errors(spec)
    errors += _shadowed_option_errors(spec)
    if not allow_privileged:
        errors += pod_template_errors(spec)
    return errors


def pod_template_errors(spec: models.StreamJobSpec) -> list[str]:
    """The privileged settings of the pod templates (``podtemplate.privileged_settings``)."""
    templates = (
        ("jobManager", spec.jobManager.podTemplate, jobmanager.CONTAINER),
        ("taskManager", spec.taskManager.podTemplate, taskmanager.CONTAINER),
    )
    return [
        f"{component}.podTemplate {finding}: privileged containers, host namespaces and"
        " ports, hostPath volumes, added capabilities and running as root are refused"
        " (the operator would hand the node to whoever writes the StreamJob); remove it,"
        " or have the operator's administrator allow privileged pods (chart value"
        " podTemplate.allowPrivileged)"
        for component, template, container in templates
        for finding in podtemplate.privileged_settings(template, container)
    ]


def _path_errors(spec: models.StreamJobSpec) -> list[str]:
    paths = {
        "checkpointing.storage": spec.checkpointing.storage,
        "savepoints.directory": spec.savepoints.directory,
        "job.initialSavepointPath": spec.job.initialSavepointPath,
    }
    return [
        f"{field} must be an absolute path on a volume every JobManager and TaskManager"
        f" mounts, or an s3://bucket/prefix URL (got {path!r}); write it from the root,"
        " e.g. /state/savepoints on a ReadWriteMany volume that podTemplate mounts, or"
        " s3://my-bucket/savepoints"
        for field, path in paths.items()
        if path is not None and not path.startswith("/") and not _is_s3_url(path)
    ]


def _is_s3_url(path: str) -> bool:
    """``s3://bucket/...`` with a bucket: the runtime's object storage (any other scheme is not)."""
    return path.startswith("s3://") and bool(path[len("s3://") :].partition("/")[0])


def _duration_errors(spec: models.StreamJobSpec) -> list[str]:
    errors = []
    positive = {
        "checkpointing.interval": spec.checkpointing.interval,
        "checkpointing.timeout": spec.checkpointing.timeout,
        "checkpointing.maxAge": spec.checkpointing.maxAge,
        "savepoints.interval": spec.savepoints.interval,
        "savepoints.historyMaxAge": spec.savepoints.historyMaxAge,
        "stability.timeout": spec.stability.timeout,
    }
    for field, value in positive.items():
        if value is not None and durations.to_ms(value) == 0:
            errors.append(f"{field} must be longer than zero (got {value!r}); set e.g. 10s")
    ha = spec.highAvailability
    lease, renew, retry = (
        durations.to_ms(d) for d in (ha.leaseDuration, ha.renewDeadline, ha.retryPeriod)
    )
    if not lease > renew > retry > 0:
        errors.append(
            "highAvailability needs leaseDuration > renewDeadline > retryPeriod > 0 (got"
            f" {ha.leaseDuration}, {ha.renewDeadline}, {ha.retryPeriod}): a leader must give"
            " up before its lease can expire; e.g. 15s, 10s, 2s"
        )
    stability = spec.stability
    if durations.to_ms(stability.timeout) <= durations.to_ms(stability.window):
        errors.append(
            f"stability.timeout ({stability.timeout}) must be longer than stability.window"
            f" ({stability.window}), or no deploy could ever become stable in time; raise the"
            " timeout or shorten the window"
        )
    return errors


def _shadowed_option_errors(spec: models.StreamJobSpec) -> list[str]:
    typed = submission.typed_options(spec)
    return [
        f"config[{key!r}] = {spec.config[key]!r} conflicts with the typed spec field that sets"
        f" it to {typed[key]!r}; remove the key from spec.config and set the typed field"
        for key in submission.shadowed_options(spec)
        if spec.config[key] != typed[key]
    ]


def transition_errors(
    running: models.StreamJobSpec, new: models.StreamJobSpec, *, with_state: bool
) -> list[str]:
    """What makes going from ``running`` to ``new`` impossible.

    ``with_state`` says whether the new job restores state from the old one: key groups
    (``maxParallelism``) cannot change across such a restore.
    """
    old_max, new_max = running.job.maxParallelism, new.job.maxParallelism
    if with_state and old_max != new_max:
        return [
            f"job.maxParallelism cannot change from {old_max} to {new_max} while the job keeps"
            " its state (its key groups are fixed); put it back to"
            f" {old_max}, or set job.upgradeMode: stateless to start from empty state"
        ]
    return []
