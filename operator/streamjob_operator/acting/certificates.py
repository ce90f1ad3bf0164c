"""When a job's certificate authority and its pods' certificate are renewed.

They are built by the runtime's ``streamjob_runtime.api.certificates`` (ECDSA P-256; a CA
valid 10 years, a pod certificate 1 year), the one place that makes the certificates the
runtime's mutual TLS accepts; this module decides, with ``now`` given, what to keep and
what to make anew.

Rotation (:func:`plan_rotation`, :func:`needs_certificate`), with ``now`` given:

- a pod certificate is re-issued when a third of its life is left, when the CA that
  signs certificates changed, or when its names differ from those wanted;
- a CA gets a successor ("next") when a third of its life is left; the successor is
  trusted (it is in the pods' ``ca.crt``) but signs nothing yet, so processes started
  from then on trust certificates of either. When a sixth is left the successor takes
  over: certificates are re-issued by it, and the old CA stays trusted ("previous")
  until it expires.

A running process keeps the certificate and the trusted CAs it read at start; the
windows (months, years) are long enough for the ordinary restarts of a job to pick up
the new files (README, "Security").
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

from cryptography import exceptions, x509

from streamjob_runtime.api import certificates as runtime_certificates


def _left(cert: x509.Certificate, now: datetime.datetime) -> float:
    """The share of ``cert``'s life left at ``now`` (negative once expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (end - now) / (end - start)


def expired(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return now >= cert.not_valid_after_utc


def valid_pair(pair: runtime_certificates.KeyPair | None) -> bool:
    """Whether ``pair`` parses and its key is the certificate's."""
    if pair is None:
        return False
    try:
        public = pair.certificate.public_key()
        key = runtime_certificates.load_key(pair.key)
    except ValueError:
        return False
    return bool(public == key.public_key())


@dataclasses.dataclass(frozen=True)
class Authorities:
    """The CAs of one job: ``current`` signs; ``next`` is trusted ahead of taking over;
    ``previous`` (a certificate only) stays trusted until it expires."""

    current: runtime_certificates.KeyPair
    next: runtime_certificates.KeyPair | None = None
    previous: bytes | None = None

    def bundle(self, now: datetime.datetime) -> bytes:
        """Every CA a pod trusts now, PEM, concatenated (current first)."""
        certs = [self.current.cert]
        if self.next is not None:
            certs.append(self.next.cert)
        if self.previous is not None and not expired(
            x509.load_pem_x509_certificate(self.previous), now
        ):
            certs.append(self.previous)
        return b"".join(certs)


def plan_rotation(
    found: Authorities | None, common_name: str, now: datetime.datetime
) -> Authorities:
    """The CAs to keep from ``found`` at ``now`` (see the module doc); ``found`` itself
    when nothing is due."""
    if found is None or not valid_pair(found.current) or expired(found.current.certificate, now):
        return Authorities(runtime_certificates.make_ca(common_name, now))
    left = _left(found.current.certificate, now)
    successor = found.next if valid_pair(found.next) else None
    if left < 1 / 6:
        return Authorities(
            successor or runtime_certificates.make_ca(common_name, now), None, found.current.cert
        )
    previous = found.previous
    if previous is not None and expired(x509.load_pem_x509_certificate(previous), now):
        previous = None
    if left < 1 / 3 and successor is None:
        successor = runtime_certificates.make_ca(common_name, now)
    if successor == found.next and previous == found.previous:
        return found
    return Authorities(found.current, successor, previous)


def needs_certificate(
    pair: runtime_certificates.KeyPair | None,
    ca: runtime_certificates.KeyPair,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: datetime.datetime,
) -> bool:
    """Whether the pod certificate ``pair`` must be (re-)issued by ``ca`` at ``now``."""
    if pair is None or not valid_pair(pair):
        return True
    cert = pair.certificate
    ca_cert = ca.certificate
    if cert.issuer != ca_cert.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, exceptions.InvalidSignature):
        return True
    if _left(cert, now) < 1 / 3:
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have_dns = sorted(san.get_values_for_type(x509.DNSName))
    have_ips = sorted(str(a) for a in san.get_values_for_type(x509.IPAddress))
    return have_dns != sorted(dns_names) or have_ips != sorted(ip_addresses)
