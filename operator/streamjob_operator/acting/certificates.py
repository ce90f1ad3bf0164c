"""A job's certificate authority and its pods' certificate, made with ``cryptography``.

Keys are ECDSA P-256. The CA is valid :data:`CA_VALIDITY` (10 years), a pod certificate
:data:`CERT_VALIDITY` (1 year); both start :data:`BACKDATE` before they are made, so a
clock a little behind does not reject them. A pod certificate is for TLS servers and
clients alike (mutual TLS between the job's processes), names the DNS names and IP
addresses it is given, and carries the key identifiers strict verifiers require.

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
import ipaddress
from collections.abc import Sequence

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
CERT_VALIDITY = datetime.timedelta(days=365)
BACKDATE = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the key is not an ECDSA key")
    return key


def make_ca(common_name: str, now: datetime.datetime) -> KeyPair:
    """A new self-signed CA named ``common_name``, valid from ``now`` for CA_VALIDITY."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamjob"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(
    ca: KeyPair,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: datetime.datetime,
) -> KeyPair:
    """A certificate signed by ``ca`` for ``dns_names`` and ``ip_addresses``, for TLS
    servers and clients, valid from ``now`` for CERT_VALIDITY (never past the CA's end)."""
    ca_cert = ca.certificate
    ca_key = _load_key(ca.key)
    key = _new_key()
    public = key.public_key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "streamjob"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _left(cert: x509.Certificate, now: datetime.datetime) -> float:
    """The share of ``cert``'s life left at ``now`` (negative once expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (end - now) / (end - start)


def expired(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return now >= cert.not_valid_after_utc


def valid_pair(pair: KeyPair | None) -> bool:
    """Whether ``pair`` parses and its key is the certificate's."""
    if pair is None:
        return False
    try:
        public = pair.certificate.public_key()
        key = _load_key(pair.key)
    except ValueError:
        return False
    return bool(public == key.public_key())


@dataclasses.dataclass(frozen=True)
class Authorities:
    """The CAs of one job: ``current`` signs; ``next`` is trusted ahead of taking over;
    ``previous`` (a certificate only) stays trusted until it expires."""

    current: KeyPair
    next: KeyPair | None = None
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
        return Authorities(make_ca(common_name, now))
    left = _left(found.current.certificate, now)
    successor = found.next if valid_pair(found.next) else None
    if left < 1 / 6:
        return Authorities(successor or make_ca(common_name, now), None, found.current.cert)
    previous = found.previous
    if previous is not None and expired(x509.load_pem_x509_certificate(previous), now):
        previous = None
    if left < 1 / 3 and successor is None:
        successor = make_ca(common_name, now)
    if successor == found.next and previous == found.previous:
        return found
    return Authorities(found.current, successor, previous)


def needs_certificate(
    pair: KeyPair | None,
    ca: KeyPair,
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
