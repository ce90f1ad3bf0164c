"""What a spec change needs, from the last reconciled spec to the new one.

Each leaf field of the spec belongs to one class, the classes ordered by what they
cost (:class:`ChangeKind`); a change is of the costliest class any changed field
belongs to:

- ``ignore``: nothing the running job or its pods see: ``stability``, ``rollback``,
  savepoint scheduling and retention, ``checkpointing.maxAge``, ``job.upgradeMode``,
  ``upgradeStrategy``, and ``job.initialSavepointPath`` / ``allowNonRestoredState``
  (read only when a job starts). The new spec is recorded; nothing is redeployed.
- ``savepoint``: ``job.savepointTriggerNonce`` changed to a new value: take a manual
  savepoint.
- ``restart``: ``job.restartNonce`` changed to a new value: stop and restart the job
  from its state, as an upgrade with the same spec.
- ``scale``: only ``job.parallelism`` and ``taskManager.replicas``. This engine has
  no rescaling of a running job (no reactive mode or adaptive scheduler: a job's
  parallelism is fixed at submission, and fewer TaskManagers would starve it of slots),
  so a rescale is an upgrade: stop with state per ``job.upgradeMode``, redeploy,
  restore with the new parallelism (key groups make the state fit). It is its own
  class so that Events say what happened.
- ``upgrade``: anything else (image, entrypoint, args, config, resources, podTemplate,
  checkpointing, high availability...).
- ``suspend`` / ``resume``: ``job.state`` changed; the other changes ride along.

A nonce changed to null takes no savepoint and restarts nothing (as in the Flink
operator).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from streamjob_operator.api import models


class ChangeKind(enum.IntEnum):
    """Change classes, cheapest first (a change is of its costliest field's class)."""

    NONE = 0
    IGNORE = 1
    SAVEPOINT = 2
    RESTART = 3
    SCALE = 4
    UPGRADE = 5
    SUSPEND = 6
    RESUME = 7

    @property
    def label(self) -> str:
        return self.name.lower()


_IGNORED = (
    "stability.",
    "rollback.",
    "savepoints.interval",
    "savepoints.historyMaxCount",
    "savepoints.historyMaxAge",
    "checkpointing.maxAge",
    "job.upgradeMode",
    "upgradeStrategy.",
    "job.initialSavepointPath",
    "job.allowNonRestoredState",
)
_SCALE = ("job.parallelism", "taskManager.replicas")


@dataclasses.dataclass(frozen=True)
class Change:
    kind: ChangeKind
    fields: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return f"{self.kind.label} ({', '.join(self.fields)})" if self.fields else self.kind.label


def encode(spec: models.StreamJobSpec) -> str:
    """The spec as ``reconciliation.lastReconciledSpec`` holds it: JSON with every default."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def decode(text: str) -> models.StreamJobSpec:
    return models.StreamJobSpec.model_validate_json(text)


def _differences(before: Any, after: Any, path: str) -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(before.keys() | after.keys()):
            found += _differences(before.get(key), after.get(key), f"{path}{key}.")
        return found
    return [] if before == after else [path.rstrip(".")]


def changed_fields(old: models.StreamJobSpec, new: models.StreamJobSpec) -> list[str]:
    """Dotted paths of what differs, down to the deepest maps both sides have
    (``config`` key by key; a pod template set where there was none is one path)."""
    return sorted(_differences(old.model_dump(mode="json"), new.model_dump(mode="json"), ""))


def _kind_of(field: str, old: models.StreamJobSpec, new: models.StreamJobSpec) -> ChangeKind:
    if field == "job.state":
        suspended = new.job.state is models.DesiredJobState.SUSPENDED
        return ChangeKind.SUSPEND if suspended else ChangeKind.RESUME
    if field == "job.savepointTriggerNonce":
        return ChangeKind.IGNORE if new.job.savepointTriggerNonce is None else ChangeKind.SAVEPOINT
    if field == "job.restartNonce":
        return ChangeKind.IGNORE if new.job.restartNonce is None else ChangeKind.RESTART
    if field in _SCALE:
        return ChangeKind.SCALE
    if any(field == p or field.startswith(p) for p in _IGNORED):
        return ChangeKind.IGNORE
    return ChangeKind.UPGRADE


def classify(old: models.StreamJobSpec | None, new: models.StreamJobSpec) -> Change:
    """The class of going from ``old`` (None: nothing deployed yet) to ``new``.

    ``old`` None is classified ``upgrade`` (a first deployment) with no fields.
    """
    if old is None:
        return Change(ChangeKind.UPGRADE)
    fields = changed_fields(old, new)
    if not fields:
        return Change(ChangeKind.NONE)
    kinds = {field: _kind_of(field, old, new) for field in fields}
    kind = max(kinds.values())
    if kind is ChangeKind.SUSPEND or kind is ChangeKind.RESUME:
        kind = kinds["job.state"]
    return Change(kind, tuple(fields))
