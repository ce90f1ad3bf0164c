"""The StreamJob itself, as one pass reads it: identity, spec, parsed status, resourceVersion.

Every pass reads the StreamJob afresh from the API server rather than trusting the
body of the event that woke it: a timer's body may predate the status this operator
wrote a moment ago, and planning from an old status would repeat steps. The
``resource_version`` read here is the precondition of the pass's first status write
(acting), so a pass planned from a status someone has since changed fails instead of
overwriting it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import pydantic
from kubernetes_asyncio import client

from streamjob_operator.api import models
from streamjob_operator.desired import target
from streamjob_operator.observing import kubeapi
from streamjob_operator.planning import clock, observed

API_VERSION = f"{models.GROUP}/{models.VERSION}"

# Child names depend only on the StreamJob's name and the deployment target, never on
# its spec; this stands in for the spec where only names are wanted.
_NAMES_ONLY = models.StreamJobSpec(image="-", job=models.JobSpec(entrypoint="-"))


class StatusUnreadable(ValueError):
    """The stored status does not parse: planning from a guess could redeploy from scratch."""


@dataclasses.dataclass(frozen=True)
class StreamJobResource:
    name: str
    namespace: str
    uid: str
    resource_version: str
    generation: int
    deletion_timestamp: datetime.datetime | None
    spec: Mapping[str, Any]
    status: models.StreamJobStatus

    @property
    def meta(self) -> observed.Meta:
        return observed.Meta(
            name=self.name,
            namespace=self.namespace,
            uid=self.uid,
            generation=self.generation,
            deletion_timestamp=self.deletion_timestamp,
        )

    def identity(self, spec: models.StreamJobSpec | None = None) -> target.StreamJob:
        """The StreamJob as the builders take it; without ``spec``, good for names only."""
        return target.StreamJob(self.name, self.namespace, self.uid, spec or _NAMES_ONLY)

    @property
    def path(self) -> str:
        return kubeapi.path(API_VERSION, models.PLURAL, self.namespace, self.name)


def from_body(body: Mapping[str, Any]) -> StreamJobResource:
    """Parse a StreamJob as the API server returns it; raises StatusUnreadable."""
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    namespace = meta.get("namespace", "")
    try:
        status = models.StreamJobStatus.model_validate(body.get("status") or {})
    except pydantic.ValidationError as e:
        raise StatusUnreadable(
            f"the status of StreamJob {namespace}/{name} cannot be read ({e.error_count()}"
            f" problem(s), first: {e.errors()[0]['msg']}); the operator will not act on it"
            " until it is fixed or removed (kubectl edit --subresource=status)"
        ) from None
    deleted = meta.get("deletionTimestamp")
    return StreamJobResource(
        name=name,
        namespace=namespace,
        uid=meta.get("uid", ""),
        resource_version=str(meta.get("resourceVersion", "")),
        generation=int(meta.get("generation") or 1),
        deletion_timestamp=None if deleted is None else clock.parse_time(deleted),
        spec=dict(body.get("spec") or {}),
        status=status,
    )


async def read(api: client.ApiClient, namespace: str, name: str) -> StreamJobResource | None:
    """The StreamJob now, or None when it is gone."""
    body = await kubeapi.get(api, kubeapi.path(API_VERSION, models.PLURAL, namespace, name))
    return None if body is None else from_body(body)
