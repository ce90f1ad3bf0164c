"""Kubernetes objects as plain JSON, by path, through a kubernetes_asyncio ``ApiClient``.

The operator handles its children as the dicts ``desired`` renders, of several kinds
(ServiceAccounts, Roles, RoleBindings, ConfigMaps, Services, Deployments), plus its own
StreamJobs, Events and Leases. kubernetes_asyncio's typed APIs would turn each into a
model and back; this module sends and returns JSON instead, addressed by
``apiVersion``, plural, namespace and name, as ``kubectl`` does.

:func:`request` is the one call to the API server, shared with acting; observing itself
only reads (:func:`get`). Errors are kubernetes_asyncio's ``ApiException`` (with
``status``) and, for a server that cannot be reached, ``aiohttp.ClientError`` or
``TimeoutError``.

:func:`client_for` makes the operator's client. kubernetes_asyncio's session has aiohttp's
``trust_env`` on, which looks up ``~/.netrc`` and the proxy variables on an executor
thread for every request: with 1,000 StreamJobs that was a quarter of the operator's CPU
and queued its Lease renewals behind passes. The client looks the proxy up once instead.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

Obj = dict[str, Any]

PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "Event": "events",
    "Lease": "leases",
    "NetworkPolicy": "networkpolicies",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "StreamJob": "streamjobs",
}

MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"


def path(
    api_version: str,
    plural: str,
    namespace: str,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """``/api/v1/namespaces/<ns>/<plural>[/<name>[/<subresource>]]`` (or ``/apis/<group>/...``)."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root, "namespaces", namespace, plural]
    if name is not None:
        parts.append(name)
        if subresource is not None:
            parts.append(subresource)
    return "/".join(parts)


def path_of(obj: Obj, subresource: str | None = None) -> str:
    """The path of a (namespaced) manifest, from its apiVersion, kind, namespace and name."""
    meta = obj["metadata"]
    return path(
        obj["apiVersion"], PLURALS[obj["kind"]], meta["namespace"], meta["name"], subresource
    )


def collection_of(obj: Obj) -> str:
    """The path to POST a (namespaced) manifest to."""
    return path(obj["apiVersion"], PLURALS[obj["kind"]], obj["metadata"]["namespace"])


async def request(
    api: client.ApiClient,
    method: str,
    resource_path: str,
    *,
    body: Obj | None = None,
    content_type: str = JSON,
    query: Sequence[tuple[str, str]] = (),  # distinct names
    request_timeout: float | None = 30.0,
) -> Obj:
    """One API call; the response's JSON (an object or a Status).

    The request goes through the client's REST layer (its session, proxy, TLS, and the
    credentials ``update_params_for_auth`` gives, refreshed as the client refreshes
    them) but not through ``ApiClient.call_api``, which would walk every body to
    "sanitize" what is JSON already and walk every answer to "deserialize" it as an
    ``object``: a tenth of the operator's CPU with a thousand StreamJobs."""
    headers: dict[str, str] = {"Accept": JSON, **api.default_headers}
    if body is not None:
        headers["Content-Type"] = content_type
    await api.update_params_for_auth(headers, [], ["BearerToken"])
    try:
        response: Any = await api.rest_client.request(
            method,
            (api.configuration.host or "") + resource_path,
            query_params=dict(query),
            headers=headers,
            body=body,
            _request_timeout=request_timeout,
        )
    except ApiException as e:
        if isinstance(e.body, bytes):  # as ApiClient.call_api gives it
            e.body = e.body.decode("utf-8", errors="replace")  # type: ignore[assignment]
        raise
    try:
        result = json.loads(response.data)
    except ValueError:
        return {}
    return result if isinstance(result, dict) else {}


async def get(api: client.ApiClient, resource_path: str) -> Obj | None:
    """The object at ``resource_path``, or None when there is none (404)."""
    try:
        return await request(api, "GET", resource_path)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def env_proxy(url: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``) names for
    ``url``, as aiohttp's ``trust_env`` would find it per request; None for none."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    bypass: Any = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009 (no stub)
    if not proxy or bypass(parts.hostname or "", proxies):
        return None
    return proxy


def client_for(configuration: client.Configuration) -> client.ApiClient:
    """An ApiClient for ``configuration`` whose requests make no per-request environment
    lookups: the proxy is taken from the environment once, here (unless ``configuration``
    names one), and ``trust_env`` is turned off. A ``~/.netrc`` is not read; the
    credentials are the kubeconfig's or the service account's."""
    if not configuration.proxy:
        configuration.proxy = env_proxy(configuration.host or "")
    api = client.ApiClient(configuration)
    # kubernetes_asyncio hard-codes trust_env=True and aiohttp reads the flag per request
    api.rest_client.pool_manager._trust_env = False
    return api
