"""A StreamJob's CA, pod certificate and REST token: kept in the Secrets it owns, rotated in time.

:func:`ensure` makes what is missing and renews what is due (``acting.certificates``:
a pod certificate with a third of its life left, a CA in two steps), writing only the
Secrets that change (``desired.security`` gives their shape; each carries the
StreamJob as controlling owner, so deleting it deletes them). :func:`read` only reads,
for a StreamJob being deleted. Both return what the operator's REST client needs: the
token and the CAs to verify the JobManager by (``observing.jobmanager.Credentials``).

A Secret of one of these names controlled by something else is a name clash, refused
as ``children.ApplyRefused``, and its content is never used.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any

from kubernetes_asyncio import client

from streamjob_operator.acting import certificates, children
from streamjob_operator.desired import jobmanager, security, target
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.observing import kubeapi
from streamjob_runtime.api import certificates as runtime_certificates

TOKEN_BYTES = 32


def _path(job: target.StreamJob, name: str) -> str:
    return kubeapi.path("v1", "secrets", job.namespace, name)


async def _read(api: client.ApiClient, job: target.StreamJob, name: str) -> dict[str, Any] | None:
    """The Secret ``name``; None when absent. Raises ApplyRefused when another owner
    controls it."""
    stored = await kubeapi.get(api, _path(job, name))
    if stored is None:
        return None
    refs = (stored.get("metadata") or {}).get("ownerReferences") or []
    controller = next((r for r in refs if r.get("controller")), None)
    if controller is not None and controller.get("uid") != job.uid:
        raise children.ApplyRefused(
            f"Secret {job.namespace}/{name} exists and is controlled by"
            f" {controller.get('kind')} {controller.get('name')}, not by this StreamJob: rename"
            " the StreamJob or remove that Secret"
        )
    return stored


def _adopted(stored: dict[str, Any] | None) -> bool:
    refs = ((stored or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") for r in refs)


def _pair(data: dict[str, bytes], cert: str, key: str) -> runtime_certificates.KeyPair | None:
    if cert in data and key in data:
        return runtime_certificates.KeyPair(data[cert], data[key])
    return None


def authorities(data: dict[str, bytes]) -> certificates.Authorities | None:
    """The CAs in the ``<streamjob>-ca`` Secret's decoded data; None when it has none."""
    current = _pair(data, security.CA_CERT, security.CA_KEY)
    if current is None:
        return None
    return certificates.Authorities(
        current,
        _pair(data, security.NEXT_CERT, security.NEXT_KEY),
        data.get(security.PREVIOUS_CERT),
    )


def _ca_data(found: certificates.Authorities) -> dict[str, bytes]:
    data = {security.CA_CERT: found.current.cert, security.CA_KEY: found.current.key}
    if found.next is not None:
        data[security.NEXT_CERT] = found.next.cert
        data[security.NEXT_KEY] = found.next.key
    if found.previous is not None:
        data[security.PREVIOUS_CERT] = found.previous
    return data


def _authorities(
    found: certificates.Authorities | None, job: target.StreamJob, now: datetime.datetime
) -> certificates.Authorities:
    """The job's CAs as due at ``now``: ``found`` kept, rotated or (None) made anew."""
    return certificates.plan_rotation(found, f"streamjob CA {job.namespace}/{job.name}", now)


def _issue(
    ca: runtime_certificates.KeyPair, job: target.StreamJob, now: datetime.datetime
) -> runtime_certificates.KeyPair:
    """A JobManager certificate for the job's REST endpoint, signed by ``ca``."""
    common_name = jobmanager.service_name(job, target.DeploymentTarget())
    names, addresses = security.dns_names(job), list(security.IP_ADDRESSES)
    return runtime_certificates.issue(ca, common_name, names, addresses, now)


async def ensure(
    api: client.ApiClient, job: target.StreamJob, now: datetime.datetime, *, new: bool = False
) -> rest_observing.Credentials:
    """Make or renew the three Secrets as due at ``now``; the REST client's credentials.

    ``new``: the StreamJob is new (no pass recorded its status), so its Secrets most
    likely do not exist: each is created at once, without a read first (three requests
    saved per new StreamJob). One that exists (409) makes this the usual read-and-decide
    for all three, which keeps what is stored, as without ``new``."""
    if new:
        made = await _create_all(api, job, now)
        if made is not None:
            return made
    stored_ca = await _read(api, job, security.ca_secret_name(job))
    found = authorities(security.secret_data(stored_ca))
    kept = _authorities(found, job, now)
    if kept != found or not _adopted(stored_ca):
        await children.apply(
            api, security.ca_secret(job, _ca_data(kept)), create_first=stored_ca is None
        )

    stored_tls = await _read(api, job, security.tls_secret_name(job))
    data = security.secret_data(stored_tls)
    pair = _pair(data, security.TLS_CERT, security.TLS_KEY)
    names = security.dns_names(job)
    addresses = list(security.IP_ADDRESSES)
    bundle = kept.bundle(now)
    fresh = certificates.needs_certificate(pair, kept.current, names, addresses, now)
    if fresh or pair is None:
        pair = _issue(kept.current, job, now)
    if fresh or data.get(security.CA_CERT) != bundle or not _adopted(stored_tls):
        await children.apply(
            api,
            security.tls_secret(job, bundle, pair.cert, pair.key),
            create_first=stored_tls is None,
        )

    stored_token = await _read(api, job, security.token_secret_name(job))
    raw = security.secret_data(stored_token).get(security.TOKEN_KEY, b"").decode(errors="replace")
    token = raw.strip()
    if not token:
        token = secrets.token_urlsafe(TOKEN_BYTES)
    if token != raw or not _adopted(stored_token):
        await children.apply(
            api, security.token_secret(job, token), create_first=stored_token is None
        )
    return rest_observing.Credentials(token=token, ca=bundle)


async def _create_all(
    api: client.ApiClient, job: target.StreamJob, now: datetime.datetime
) -> rest_observing.Credentials | None:
    """Create the three Secrets as :func:`ensure` makes them when none exists, each without
    reading it first; None as soon as one exists (then nothing more is created)."""
    kept = _authorities(None, job, now)
    bundle = kept.bundle(now)
    pair = _issue(kept.current, job, now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    for manifest in (
        security.ca_secret(job, _ca_data(kept)),
        security.tls_secret(job, bundle, pair.cert, pair.key),
        security.token_secret(job, token),
    ):
        if not await children.create(api, manifest):
            return None
    return rest_observing.Credentials(token=token, ca=bundle)


async def read(api: client.ApiClient, job: target.StreamJob) -> rest_observing.Credentials | None:
    """The REST client's credentials as stored, changing nothing; None when incomplete."""
    tls = security.secret_data(await _read(api, job, security.tls_secret_name(job)))
    token = security.secret_data(await _read(api, job, security.token_secret_name(job)))
    ca, value = tls.get(security.CA_CERT), token.get(security.TOKEN_KEY)
    if not ca or not value:
        return None
    return rest_observing.Credentials(token=value.decode(errors="replace").strip(), ca=ca)
