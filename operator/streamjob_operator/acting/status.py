"""Writing a StreamJob's status: the write-ahead log of the reconcile loop.

Every write is a JSON merge patch of the status subresource that carries the
``resourceVersion`` the writer last saw as a precondition: the one the pass read the
StreamJob at, then the one each write returned. A status, or a spec, changed by anyone
else since then (a user's edit, another operator replica that still thinks it leads)
makes the write fail with 409 Conflict, and the pass stops before the destructive
action the write was to announce; the next pass plans again from what is stored. The
whole status is sent each time; fields it clears are sent as null, which a merge
patch removes.

:meth:`StatusWriter.record` writes a result an action returned (a submitted job's id)
into the status as last written. Losing such a result would lose track
of a savepoint under way, so a conflict there is retried: the StreamJob is read again
and the result written into its current status, as long as that status still
describes the same request (``still``), else the result is dropped and the write fails.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_operator.api import models
from streamjob_operator.observing import kubeapi, resource

CONFLICT_RETRIES = 3


class StatusWriter:
    def __init__(self, api: client.ApiClient, streamjob: resource.StreamJobResource) -> None:
        self.api = api
        self.streamjob = streamjob
        self.resource_version = streamjob.resource_version
        self.last = streamjob.status  # as stored: what the next write starts from
        self.writes = 0

    @property
    def path(self) -> str:
        return kubeapi.path(
            resource.API_VERSION,
            models.PLURAL,
            self.streamjob.namespace,
            self.streamjob.name,
            "status",
        )

    async def write(self, status: models.StreamJobStatus) -> None:
        """Write ``status`` unless it is what was last written (or read)."""
        if status == self.last:
            return
        body = {
            "metadata": {"resourceVersion": self.resource_version},
            "status": status.model_dump(mode="json"),
        }
        stored = await kubeapi.request(
            self.api, "PATCH", self.path, body=body, content_type=kubeapi.MERGE_PATCH
        )
        self.resource_version = str(
            (stored.get("metadata") or {}).get("resourceVersion", self.resource_version)
        )
        self.last = status.model_copy(deep=True)
        self.writes += 1

    async def record(
        self,
        put: Callable[[models.StreamJobStatus], None],
        still: Callable[[models.StreamJobStatus], bool],
    ) -> models.StreamJobStatus:
        """Write the last status with ``put`` applied; on conflict, re-read and apply
        ``put`` to the stored status while ``still`` holds of it. Returns what was written."""
        status = self.last.model_copy(deep=True)
        put(status)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                await self.write(status)
                return status
            except ApiException as e:
                if e.status != 409 or attempt == CONFLICT_RETRIES:
                    raise
            current = await resource.read(self.api, self.streamjob.namespace, self.streamjob.name)
            if current is None or not still(current.status):
                raise RuntimeError(
                    "the status changed under the operator before it could record a result"
                    " of its last action; the next pass reconciles from the stored status"
                )
            self.resource_version = current.resource_version
            self.last = current.status
            status = current.status.model_copy(deep=True)
            put(status)
        raise AssertionError("unreachable")
