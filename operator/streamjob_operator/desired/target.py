"""What the builders render: a StreamJob and the deployment target (colour, savepoint)."""

from __future__ import annotations

import dataclasses
import enum

from streamjob_operator.api import models


@dataclasses.dataclass(frozen=True)
class StreamJob:
    """The custom resource as the builders need it: identity plus the validated spec.

    ``spec`` is the spec being deployed, which during a blue-green upgrade is the new
    spec for the new colour and the old one for the old colour.
    """

    name: str
    namespace: str
    uid: str
    spec: models.StreamJobSpec


class Color(enum.StrEnum):
    BLUE = "blue"
    GREEN = "green"


@dataclasses.dataclass(frozen=True)
class DeploymentTarget:
    """Which copy of the cluster is rendered, and from where its job restores.

    ``color`` is None for the ``recreate`` upgrade strategy (one copy, named after the
    StreamJob) and blue or green for ``blueGreen``: each colour is a separate cluster
    (its own names, HA cluster id, Lease and HA ConfigMap) so both can run side by side.
    ``savepoint_path`` is what planning chose to restore from (a savepoint, a retained
    checkpoint, ``job.initialSavepointPath``, or None for empty state); the builders
    only copy it into the submission.
    """

    color: Color | None = None
    savepoint_path: str | None = None

    @property
    def suffix(self) -> str:
        return "" if self.color is None else f"-{self.color.value}"
