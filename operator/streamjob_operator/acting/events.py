"""Kubernetes Events about a StreamJob (core/v1 Events with ``involvedObject``).

``kubectl describe streamjob x`` lists them. core/v1 is used rather than
events.k8s.io/v1 because every cluster serves it and ``kubectl describe`` reads it.
Each Event is a new object (``generateName``); nothing is aggregated. Messages are cut
to the API server's 1 kB limit.
"""

from __future__ import annotations

import datetime
from typing import Any

from kubernetes_asyncio import client

from streamjob_operator.api import models
from streamjob_operator.observing import kubeapi, resource
from streamjob_operator.planning import actions

MAX_MESSAGE = 1024


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event(
    streamjob: resource.StreamJobResource,
    record: actions.RecordEvent,
    now: datetime.datetime,
    component: str,
    instance: str,
) -> dict[str, Any]:
    message = record.message
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{streamjob.name}.", "namespace": streamjob.namespace},
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
) -> None:
    body = event(streamjob, record, now, component, instance)
    await kubeapi.request(api, "POST", kubeapi.collection_of(body), body=body)
