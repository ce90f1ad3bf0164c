"""Security: the job's CA and certificates, TLS contexts, the REST token, allowed roots.

Every internal connection (TaskManager <-> JobManager RPC, TaskManager <->
TaskManager data) is mutual TLS: both ends present a certificate signed by the
job's own CA and verify the peer's against that CA, so a peer without one is
refused in the TLS handshake, before a byte of ours is decoded.  Host names are
not checked on internal connections (pods reach each other by IP, and every pod
of a job holds the same certificate): possession of a certificate of the job's
CA is what authenticates a peer.  The REST API is HTTPS with the same
certificate (clients verify it with the CA, host name included) and a bearer
token.

A TLS directory holds ``ca.crt`` (the job CA, PEM), ``tls.crt`` (a certificate
the CA signed) and ``tls.key`` (its key): the layout of a Kubernetes
``kubernetes.io/tls`` Secret with its ``ca.crt``.  :func:`write_credentials`
makes such a directory with a fresh CA (the local cluster's ephemeral one).
"""

from __future__ import annotations

import datetime
import hmac
import os
import re
import secrets
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
TOKEN_FILE = "rest-token"


class SecurityError(ValueError):
    """Security settings are missing or unusable; the message says which flag to fix."""


# -- certificates ---------------------------------------------------------------------------


def new_token() -> str:
    """A REST bearer token: 32 random bytes, url-safe base64 (the operator's format)."""
    return secrets.token_urlsafe(32)


def write_credentials(
    directory: Path,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 30,
) -> Path:
    """Make a fresh CA and a certificate it signs; write ``ca.crt``, ``tls.crt``,
    ``tls.key`` (mode 0600) into ``directory`` and return it.

    The CA's private key is not kept: nothing can be signed with it later, so the
    directory is all a job needs and rotating means writing a new one. The certificates
    are built as the operator's are (``streamjob_runtime.api.certificates``).
    """
    from streamjob_runtime.api import certificates

    now = datetime.datetime.now(datetime.UTC)
    validity = datetime.timedelta(days=days)
    ca = certificates.make_ca("streamjob job CA", now, validity)
    pair = certificates.issue(ca, "streamjob", dns_names, ip_addresses, now, validity)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CA_FILE).write_bytes(ca.cert)
    (directory / CERT_FILE).write_bytes(pair.cert)
    fd = os.open(directory / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pair.key)
    return directory


def write_token(path: Path, token: str) -> Path:
    """Write ``token`` to ``path`` readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SecurityError(f"cannot read the REST token file {path}: {e.strerror}") from None
    if not token:
        raise SecurityError(f"the REST token file {path} is empty")
    return token


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison (no timing oracle on the token)."""
    return hmac.compare_digest(given.encode(), expected.encode())


# -- TLS contexts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A TLS directory's three files (see the module docstring)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE

    @classmethod
    def load(cls, directory: str | Path, flag: str = "--tls-dir") -> TlsFiles:
        """Check the directory holds the three files; raise :class:`SecurityError` naming
        ``flag`` otherwise."""
        files = cls(Path(directory))
        missing = [p.name for p in (files.ca, files.cert, files.key) if not p.is_file()]
        if missing:
            raise SecurityError(
                f"{flag} {directory} lacks {', '.join(missing)}: it must hold {CA_FILE} (the"
                f" job CA), {CERT_FILE} and {KEY_FILE} (a certificate the CA signed, its key)"
            )
        try:
            files.server_context()
        except (ssl.SSLError, OSError) as e:
            raise SecurityError(
                f"{flag} {directory}: the certificate files are unusable: {e}"
            ) from None
        return files

    def _context(self, purpose: ssl._SSLMethod) -> ssl.SSLContext:
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(cafile=self.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """Internal servers (RPC, data port): a client certificate of the job CA is required."""
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        """Internal clients: present our certificate, verify the server's against the job CA
        (no host name check: see the module docstring)."""
        ctx = self._context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def rest_context(self) -> ssl.SSLContext:
        """The REST server: HTTPS with the job certificate; clients authenticate by token."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


# -- allowed roots --------------------------------------------------------------------------


def split_roots(value: str | None) -> tuple[str, ...]:
    """``ROOT[:ROOT...]`` (empty parts dropped); a root may be a URL (``s3://bucket/prefix``),
    whose ``://`` does not split it."""
    return tuple(p for p in re.split(r":(?!//)", value or "") if p)


def _url(path: str | Path) -> tuple[str, str] | None:
    """(``scheme://bucket``, key segments joined by ``/``) for an object-store URL, None for a
    local path (``file://`` included); a key with ``.`` or ``..`` segments gives ("", "").

    Object stores do not resolve ``..``, but some S3-compatible servers and proxies do:
    such a URL is never within a root.
    """
    text = os.fspath(path)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme == "file":
        return None
    bucket, _, key = rest.partition("/")
    parts = [p for p in key.split("/") if p]
    if not bucket or any(p in (".", "..") for p in parts):
        return "", ""
    return f"{scheme}://{bucket}", "/".join(parts)


def _real(path: str | Path) -> str:
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.realpath(os.path.abspath(text))


def within(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """Whether ``path`` (symbolic links resolved) is one of ``roots`` or lies inside one.

    An object-store URL (``s3://bucket/key``) lies inside a root of the same scheme and
    bucket whose key is a whole-segment prefix of its key; a local root never admits a
    URL, and a URL root never admits a local path.
    """
    url = _url(path)
    if url is not None:
        where, key = url
        if not where:
            return False
        for root in roots:
            root_url = _url(root)
            if root_url is None or not root_url[0] or root_url[0] != where:
                continue
            prefix = root_url[1]
            if not prefix or key == prefix or key.startswith(prefix + "/"):
                return True
        return False
    real = _real(path)
    for root in roots:
        if _url(root) is not None:
            continue
        base = _real(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return True
    return False


DEFAULT_JOB_ROOTS = ("/opt/streamjob/jobs", "/opt/streamjob/examples")


@dataclass(frozen=True)
class Settings:
    """A JobManager's or TaskManager's security settings (from its flags).

    ``tls`` None: plain TCP and HTTP (``--insecure``).  ``rest_token`` None: REST
    without a token (``--insecure``).  ``job_roots`` None: job files from anywhere;
    ``storage_roots`` None: savepoints to and restores from anywhere.
    """

    tls: TlsFiles | None = None
    rest_token: str | None = None
    job_roots: tuple[str, ...] | None = None
    storage_roots: tuple[str, ...] | None = None

    def check_storage(self, path: str | Path, what: str) -> None:
        """Raise :class:`StorageNotAllowed` if ``path`` lies outside the storage roots."""
        if self.storage_roots is None or within(path, self.storage_roots):
            return
        raise StorageNotAllowed(
            f"{what} {path} is outside the allowed storage roots"
            f" ({', '.join(self.storage_roots) or 'none'}); use a directory inside one of them,"
            " or start the JobManager with --storage-roots naming it"
        )


class StorageNotAllowed(SecurityError):
    """A savepoint target or restore path outside the storage roots (HTTP 403)."""
