"""The job's credentials as its pods see them: Secret names, mounts, flags and Secret shapes.

Per StreamJob (shared by both blue-green colours) the operator keeps three Secrets, all
owned by the StreamJob so deleting it deletes them:

- ``<streamjob>-ca`` (Opaque): the job's own certificate authority, ``ca.crt`` and
  ``ca.key``, plus ``next.crt``/``next.key`` while a successor is being introduced and
  ``previous.crt`` while certificates of the one before may still be in use. Mounted
  nowhere: the operator alone signs with it (``acting.credentials``).
- ``<streamjob>-tls`` (``kubernetes.io/tls``): ``tls.crt`` and ``tls.key``, one
  certificate for all of the job's pods, signed by the CA, and ``ca.crt``, the CAs a
  peer's certificate may be signed by (the current one, and its successor or
  predecessor during a rotation). Mounted at :data:`TLS_DIR`.
- ``<streamjob>-rest-token`` (Opaque): ``token``, the bearer token of the JobManager's
  REST API (32 random bytes, url-safe base64). Mounted at :data:`TOKEN_FILE`.

The pods take them by the runtime's flags (``--tls-dir``, ``--rest-token-file``) and
serve ``/metrics``, ``/healthz`` and ``/readyz`` on a separate plain-HTTP port
(``--metrics-port``), which Kubernetes probes. Only the shapes are here; the material is
made in acting, which is allowed randomness and a clock.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from streamjob_operator.desired import metadata, target

TLS_DIR = "/etc/streamjob/tls"
TOKEN_DIR = "/etc/streamjob/rest"
TOKEN_KEY = "token"
TOKEN_FILE = f"{TOKEN_DIR}/{TOKEN_KEY}"
METRICS_PORT = 9249

TLS_VOLUME = "tls"
TOKEN_VOLUME = "rest-token"

# Keys of the Secrets.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NEXT_CERT = "next.crt"
NEXT_KEY = "next.key"
PREVIOUS_CERT = "previous.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

_CA_SUFFIX = "-ca"
_TLS_SUFFIX = "-tls"
_TOKEN_SUFFIX = "-rest-token"


def _name(job: target.StreamJob, suffix: str) -> str:
    return metadata.bounded(job.name, metadata.MAX_NAME - len(suffix)) + suffix


def ca_secret_name(job: target.StreamJob) -> str:
    return _name(job, _CA_SUFFIX)


def tls_secret_name(job: target.StreamJob) -> str:
    return _name(job, _TLS_SUFFIX)


def token_secret_name(job: target.StreamJob) -> str:
    return _name(job, _TOKEN_SUFFIX)


def dns_names(job: target.StreamJob) -> list[str]:
    """The names the certificate is for: each colour's JobManager Service (short, with
    the namespace, ``.svc`` and ``.svc.cluster.local``), the pods' DNS names
    (``*.<namespace>.pod``) and ``localhost``; plus the IP address 127.0.0.1."""
    names: list[str] = []
    for color in (None, *target.Color):
        service = metadata.name(job, target.DeploymentTarget(color), metadata.Component.JOBMANAGER)
        for tail in ("", f".{job.namespace}", f".{job.namespace}.svc"):
            names.append(service + tail)
        names.append(f"{service}.{job.namespace}.svc.cluster.local")
    names += [f"*.{job.namespace}.pod", f"*.{job.namespace}.pod.cluster.local", "localhost"]
    return names


IP_ADDRESSES = ("127.0.0.1",)


def arguments(*, jobmanager: bool) -> list[str]:
    """The flags that point the runtime at its credentials and its metrics port."""
    args = ["--tls-dir", TLS_DIR]
    if jobmanager:
        args += ["--rest-token-file", TOKEN_FILE]
    return [*args, "--metrics-port", str(METRICS_PORT)]


def metrics_port() -> dict[str, Any]:
    return {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}


def volumes(job: target.StreamJob, *, jobmanager: bool) -> list[dict[str, Any]]:
    """The Secret volumes of a pod; only JobManagers get the REST token."""
    found = [
        {
            "name": TLS_VOLUME,
            "secret": {"secretName": tls_secret_name(job), "defaultMode": 0o440},
        }
    ]
    if jobmanager:
        found.append(
            {
                "name": TOKEN_VOLUME,
                "secret": {
                    "secretName": token_secret_name(job),
                    "defaultMode": 0o440,
                    "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}],
                },
            }
        )
    return found


def volume_mounts(*, jobmanager: bool) -> list[dict[str, Any]]:
    mounts = [{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]
    if jobmanager:
        mounts.append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    return mounts


def _secret(
    job: target.StreamJob, name: str, kind: str, data: Mapping[str, bytes]
) -> dict[str, Any]:
    where = target.DeploymentTarget()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": metadata.labels(job, where, metadata.Component.CREDENTIALS),
            "ownerReferences": [metadata.owner_reference(job)],
        },
        "type": kind,
        "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())},
    }


def ca_secret(job: target.StreamJob, data: Mapping[str, bytes]) -> dict[str, Any]:
    """``<streamjob>-ca`` holding ``data`` (PEM by key: :data:`CA_CERT`, :data:`CA_KEY`...)."""
    return _secret(job, ca_secret_name(job), "Opaque", data)


def tls_secret(job: target.StreamJob, ca_bundle: bytes, cert: bytes, key: bytes) -> dict[str, Any]:
    """``<streamjob>-tls``: the pods' certificate and key, and the CAs they trust."""
    data = {CA_CERT: ca_bundle, TLS_CERT: cert, TLS_KEY: key}
    return _secret(job, tls_secret_name(job), "kubernetes.io/tls", data)


def token_secret(job: target.StreamJob, token: str) -> dict[str, Any]:
    return _secret(job, token_secret_name(job), "Opaque", {TOKEN_KEY: token.encode()})


def secret_data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """A stored Secret's ``data``, decoded; empty for None or undecodable entries."""
    found: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            found[key] = base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            continue
    return found
