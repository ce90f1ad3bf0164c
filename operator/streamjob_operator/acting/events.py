"""Kubernetes Events about a StreamJob (core/v1 Events with ``involvedObject``).

``kubectl describe streamjob x`` lists them. core/v1 is used rather than
events.k8s.io/v1 because every cluster serves it and ``kubectl describe`` reads it.
Messages are cut to the API server's 1 kB limit.

Posting is idempotent: an Event's name is derived from what it records (the StreamJob's
uid, the status write it follows, its type, reason and message; :func:`name`), so a
POST sent again (a retry after a timeout whose request did arrive, a pass that posts
what an earlier attempt posted) meets 409 AlreadyExists and is done: the same Event is
never stored twice. Nothing else is aggregated.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from streamjob_operator.api import models
from streamjob_operator.observing import kubeapi, resource
from streamjob_operator.planning import actions

MAX_MESSAGE = 1024


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def name(streamjob: resource.StreamJobResource, record: actions.RecordEvent, after: str) -> str:
    """The Event's name: the StreamJob's name and a digest of its uid, ``after`` (the
    resourceVersion of the status write the Event follows) and the record."""
    key = "\0".join(
        (streamjob.uid, after, record.type.value, record.reason, record.message)
    ).encode()
    return f"{streamjob.name}.{hashlib.sha256(key).hexdigest()[:16]}"


def event(
    streamjob: resource.StreamJobResource,
    record: actions.RecordEvent,
    now: datetime.datetime,
    component: str,
    instance: str,
    after: str = "",
) -> dict[str, Any]:
    """The Event of ``record``, named by :func:`name` with ``after``."""
    message = record.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name(streamjob, record, after), "namespace": streamjob.namespace},
        "involvedObject": {
            "apiVersion": resource.API_VERSION,
            "kind": models.KIND,
            "name": streamjob.name,
            "namespace": streamjob.namespace,
            "uid": streamjob.uid,
            "resourceVersion": streamjob.resource_version,
        },
        "type": record.type.value,
        "reason": record.reason,
        "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": _seconds(now),
        "lastTimestamp": _seconds(now),
        "eventTime": _micro(now),
        "action": "Reconcile",
        "count": 1,
    }


async def post(
    api: client.ApiClient,
    streamjob: resource.StreamJobResource,
    record: actions.RecordEvent,
    now: datetime.datetime,
    component: str,
    instance: str,
    after: str = "",
) -> bool:
    """Post the Event; False when it exists already (posted before: nothing to do)."""
    body = event(streamjob, record, now, component, instance, after)
    try:
        await kubeapi.request(api, "POST", kubeapi.collection_of(body), body=body)
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True
