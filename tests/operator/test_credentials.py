"""The job's CA, certificate and REST token: made in Secrets the StreamJob owns, rotated in
time, and used by the operator's REST client (HTTPS verified by the job's CA, bearer token).

The material is checked with the real mechanism: TLS handshakes between the issued
certificate and contexts built from the Secrets, and the operator's REST calls against an
HTTPS JobManager that refuses anyone without the token.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from streamjob_operator.acting import children, credentials
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.observing import resource
from streamjob_operator.planning import actions
from streamjob_runtime.api import certificates as runtime_certificates
from streamjob_runtime.api import models as rest
from tests.kube import KubeEmulator, fixtures
from tests.operator import test_observing
from tests.operator.test_acting import GROUP_VERSION, HERE, NOW, act, job_of, rest_settings
from tests.operator.test_observing import NAMESPACE, FakeJobManager

kube = fixtures.kube

DAY = datetime.timedelta(days=1)


@pytest.fixture
def streamjob(kube: KubeEmulator) -> resource.StreamJobResource:
    test_observing.create_streamjob(kube)
    return test_observing.read_resource(kube)


def secret(kube: KubeEmulator, name: str) -> dict[str, Any]:
    found = kube.get("v1", "secrets", name, NAMESPACE)
    assert found is not None, f"no Secret {name}"
    return found


def data(kube: KubeEmulator, name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret(kube, name)["data"].items()}


def ensure(
    kube: KubeEmulator,
    streamjob: resource.StreamJobResource,
    now: datetime.datetime,
    *,
    new: bool = False,
) -> rest_observing.Credentials:
    async def main() -> rest_observing.Credentials:
        async with fixtures.api_client(kube) as api:
            return await credentials.ensure(api, streamjob.identity(), now, new=new)

    return asyncio.run(main())


def certs(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle)


# -- made with the children, owned by the StreamJob ---------------------------------------------


def test_applying_children_first_makes_the_ca_certificate_and_token_secrets_the_streamjob_owns(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    outcome = act(kube, streamjob, actions.ApplyChildren(job_of(streamjob), HERE))
    assert outcome.ok, outcome.error
    for name, kind in (
        ("wordcount-ca", "Opaque"),
        ("wordcount-tls", "kubernetes.io/tls"),
        ("wordcount-rest-token", "Opaque"),
    ):
        stored = secret(kube, name)
        assert stored["type"] == kind
        (owner,) = stored["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "StreamJob",
            streamjob.uid,
            True,
        )
    ca, tls = data(kube, "wordcount-ca"), data(kube, "wordcount-tls")
    assert sorted(ca) == ["ca.crt", "ca.key"]
    assert sorted(tls) == ["ca.crt", "tls.crt", "tls.key"]  # the CA's key stays out
    assert tls["ca.crt"] == ca["ca.crt"]
    token = data(kube, "wordcount-rest-token")["token"].decode()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    cert = x509.load_pem_x509_certificate(tls["tls.crt"])
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca["ca.crt"]))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {
        "wordcount-jobmanager.default.svc",
        "wordcount-jobmanager.default.svc.cluster.local",
        "wordcount-blue-jobmanager.default.svc",
        "wordcount-green-jobmanager.default.svc",
        "*.default.pod",
        "localhost",
    } <= set(san.get_values_for_type(x509.DNSName))
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
    # the pods mount exactly these Secrets
    pod = kube.get("apps/v1", "deployments", "wordcount-jobmanager", NAMESPACE)
    assert pod is not None
    volumes = {v["name"]: v for v in pod["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "wordcount-tls"
    assert volumes["rest-token"]["secret"]["secretName"] == "wordcount-rest-token"
    # deleting the StreamJob deletes them (garbage collection by owner reference)
    kube.delete(GROUP_VERSION, "streamjobs", "wordcount", NAMESPACE)
    kube.wait_for(
        lambda: not kube.list("v1", "secrets", NAMESPACE), 10, "the Secrets to be collected"
    )


def test_a_new_streamjobs_secrets_are_created_without_reads_and_existing_ones_are_kept(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    """``new``: the three Secrets are POSTed without a read first. One that exists (a
    pass that made it stopped before recording status) turns that into the usual
    read-and-decide: the stored CA is kept, and what is missing is made from it."""
    mark = len(kube.requests)
    made = ensure(kube, streamjob, NOW, new=True)
    sent = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kube.requests[mark:]]
    assert sent == [("POST", "secrets")] * 3, sent
    assert data(kube, "wordcount-rest-token")["token"].decode() == made.token
    assert data(kube, "wordcount-tls")["ca.crt"] == made.ca
    ca = data(kube, "wordcount-ca")

    kube.delete("v1", "secrets", "wordcount-tls", NAMESPACE)
    kube.delete("v1", "secrets", "wordcount-rest-token", NAMESPACE)
    again = ensure(kube, streamjob, NOW + DAY, new=True)
    assert data(kube, "wordcount-ca") == ca  # kept, not replaced by a new CA
    assert again.ca == made.ca
    tls = data(kube, "wordcount-tls")
    issued = x509.load_pem_x509_certificate(tls["tls.crt"])
    (authority,) = certs(ca["ca.crt"])
    assert issued.issuer == authority.subject
    assert data(kube, "wordcount-rest-token")["token"].decode() == again.token


@pytest.mark.parametrize("new", [False, True])
def test_a_secret_of_that_name_controlled_by_another_owner_is_refused_and_not_used(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, new: bool
) -> None:
    owner = kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "someone", "namespace": NAMESPACE},
        }
    )
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "wordcount-rest-token",
                "namespace": NAMESPACE,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "someone",
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "data": {"token": base64.b64encode(b"theirs").decode()},
        }
    )
    with pytest.raises(children.ApplyRefused, match="controlled by ConfigMap someone"):
        ensure(kube, streamjob, NOW, new=new)
    assert data(kube, "wordcount-rest-token") == {"token": b"theirs"}


# -- the material works: TLS handshakes ---------------------------------------------------------


def _write(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """One TLS handshake over a socket pair; raises ssl.SSLError when either side refuses."""
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as e:
            errors.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=hostname) as c:
            c.sendall(b"x")
    finally:
        thread.join(10)
    if errors:
        raise errors[0]


def test_the_pods_certificate_authenticates_both_ends_and_a_stranger_is_refused(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, tmp_path: Path
) -> None:
    creds = ensure(kube, streamjob, datetime.datetime.now(datetime.UTC))
    tls = data(kube, "wordcount-tls")
    cert, key = (
        _write(tmp_path, "tls.crt", tls["tls.crt"]),
        _write(tmp_path, "tls.key", tls["tls.key"]),
    )
    ca = _write(tmp_path, "ca.crt", tls["ca.crt"])

    def server(mutual: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        if mutual:  # as between the job's pods; REST takes a token instead
            context.load_verify_locations(ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    client = ssl.create_default_context(cafile=ca)
    client.load_cert_chain(cert, key)
    handshake(server(), client, "wordcount-jobmanager.default.svc")  # a peer of the job
    rest = "wordcount-jobmanager.default.svc"
    handshake(server(mutual=False), creds.ssl_context, rest)  # the operator
    handshake(server(mutual=False), creds.ssl_context, "127.0.0.1")

    now = datetime.datetime.now(datetime.UTC)
    other_ca = runtime_certificates.make_ca("someone else", now)
    other = runtime_certificates.issue(other_ca, "x", ["wordcount-jobmanager.default.svc"], [], now)
    stranger = ssl.create_default_context(cafile=ca)
    stranger.load_cert_chain(
        _write(tmp_path, "o.crt", other.cert), _write(tmp_path, "o.key", other.key)
    )
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(server(), stranger, "wordcount-jobmanager.default.svc")
    with pytest.raises(ssl.SSLCertVerificationError):  # the operator checks the name too
        handshake(server(mutual=False), creds.ssl_context, "elsewhere.default.svc")


# -- rotation ----------------------------------------------------------------------------------


def test_the_certificate_is_reissued_before_it_expires_and_the_ca_rotates_in_two_steps(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    first = ensure(kube, streamjob, NOW)
    tls0, ca0 = data(kube, "wordcount-tls"), data(kube, "wordcount-ca")
    token = data(kube, "wordcount-rest-token")["token"]

    # early in its life nothing changes (and nothing is written)
    before = len(kube.requests)
    assert ensure(kube, streamjob, NOW + 100 * DAY) == first
    assert [r for r in kube.requests[before:] if r.method != "GET"] == []

    # with less than a third of its year left the certificate is re-issued, same CA
    ensure(kube, streamjob, NOW + 250 * DAY)
    tls1 = data(kube, "wordcount-tls")
    assert tls1["tls.crt"] != tls0["tls.crt"]
    assert data(kube, "wordcount-ca") == ca0
    renewed = x509.load_pem_x509_certificate(tls1["tls.crt"])
    assert renewed.not_valid_after_utc > NOW + 250 * DAY + 300 * DAY

    # a third of the CA's ten years left: a successor is trusted, but signs nothing yet
    at = NOW + 7 * 365 * DAY
    ensure(kube, streamjob, at)
    ca2 = data(kube, "wordcount-ca")
    assert ca2["ca.crt"] == ca0["ca.crt"]
    assert "next.crt" in ca2
    tls2 = data(kube, "wordcount-tls")
    assert [c.subject for c in certs(tls2["ca.crt"])] == [
        certs(ca0["ca.crt"])[0].subject,
        certs(ca2["next.crt"])[0].subject,
    ]
    issued = x509.load_pem_x509_certificate(tls2["tls.crt"])
    issued.verify_directly_issued_by(certs(ca0["ca.crt"])[0])

    # a sixth left: the successor takes over, the old CA stays trusted
    at = NOW + int(8.5 * 365) * DAY
    ensure(kube, streamjob, at)
    ca3, tls3 = data(kube, "wordcount-ca"), data(kube, "wordcount-tls")
    assert ca3["ca.crt"] == ca2["next.crt"]
    assert ca3["previous.crt"] == ca0["ca.crt"]
    assert "next.crt" not in ca3
    x509.load_pem_x509_certificate(tls3["tls.crt"]).verify_directly_issued_by(
        certs(ca3["ca.crt"])[0]
    )
    assert tls3["ca.crt"] == ca3["ca.crt"] + ca0["ca.crt"]

    # the old CA gone by, it is no longer trusted; the token never changed
    ensure(kube, streamjob, NOW + 3651 * DAY)
    assert "previous.crt" not in data(kube, "wordcount-ca")
    assert data(kube, "wordcount-tls")["ca.crt"] == ca3["ca.crt"]
    assert data(kube, "wordcount-rest-token")["token"] == token


def test_read_changes_nothing_and_finds_nothing_before_the_secrets_exist(
    kube: KubeEmulator, streamjob: resource.StreamJobResource
) -> None:
    async def read() -> rest_observing.Credentials | None:
        async with fixtures.api_client(kube) as api:
            return await credentials.read(api, streamjob.identity())

    assert asyncio.run(read()) is None
    assert kube.list("v1", "secrets", NAMESPACE) == []
    made = ensure(kube, streamjob, NOW)
    assert asyncio.run(read()) == made


# -- the operator's REST client ----------------------------------------------------------------


def tls_jobmanager(kube: KubeEmulator, tmp_path: Path, token: str) -> FakeJobManager:
    """A fake JobManager serving HTTPS with the job's certificate, requiring its token."""
    tls = data(kube, "wordcount-tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        _write(tmp_path, "tls.crt", tls["tls.crt"]), _write(tmp_path, "tls.key", tls["tls.key"])
    )
    return FakeJobManager(ssl_context=context, token=token)


def test_the_operator_calls_the_jobmanager_over_https_with_the_jobs_token(
    kube: KubeEmulator, streamjob: resource.StreamJobResource, tmp_path: Path
) -> None:
    made = ensure(kube, streamjob, NOW)
    with tls_jobmanager(kube, tmp_path, made.token) as jm:
        assert jm.url.startswith("https://")
        submission = rest.JobSubmission(entrypoint="examples.wordcount", parallelism=1)
        outcome = act(
            kube, streamjob, actions.SubmitJob(submission, HERE), settings=rest_settings(jm)
        )
        assert outcome.ok, outcome.error
        assert len(jm.submissions) == 1
        assert set(jm.authorizations) == {f"Bearer {made.token}"}

        # observing too; without the credentials the JobManager is not reachable
        async def observe(creds: rest_observing.Credentials | None) -> bool:
            seen = await rest_observing.observe(jm.url, None, None, credentials=creds)
            return seen.reachable

        assert asyncio.run(observe(made))
        assert not asyncio.run(observe(None))  # the CA is not a public one
        wrong = rest_observing.Credentials(token="guessed", ca=made.ca)
        assert not asyncio.run(observe(wrong))  # 401
        assert jm.authorizations[-1] == "Bearer guessed"
