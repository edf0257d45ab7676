"""Certificate authorities and the certificates they issue: EC P-256 keys, SHA-256
signatures, PEM encoding (made with ``cryptography``).

The primitives behind both CAs of the project: the webhook's own CA (webhook_tls.py adds
rotation and the Secret's shape) and the local test bed's control-plane CA. The clock is a
parameter (default: now), so callers that must be pure pass it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Tolerates a little clock skew between the signer and whoever verifies.
BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A PEM-encoded private key and the certificate for it."""

    key_pem: bytes
    cert_pem: bytes


def key_pem(key: PrivateKeyTypes) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """An EC private key from PEM; ValueError for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    """O=... (one per organization, Kubernetes' groups), then CN (at most 64 characters, as X.509 allows)."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]))
    return x509.Name(attrs)


def _utc_now(now: dt.datetime | None) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) if now is None else now


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, key_cert_sign=cert_sign, crl_sign=cert_sign, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False)


def make_ca(common_name: str, *, now: dt.datetime | None = None, days: int = 3650, serial: int | None = None,
            path_length: int | None = None, key_identifier: bool = False) -> KeyPair:
    """A self-signed CA, valid from ``now`` (backdated by :data:`BACKDATE`) for ``days``.

    ``path_length``: how many intermediate CAs may follow (None: no limit).
    ``key_identifier``: add a SubjectKeyIdentifier, which lets a verifier pick this CA
    among several in a bundle (the webhook's CA rollover).
    """
    now = _utc_now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    if key_identifier:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return KeyPair(key_pem(key), cert_pem(builder.sign(key, hashes.SHA256())))


def issue(ca: KeyPair, common_name: str, *, organizations: Sequence[str] = (), dns_names: Sequence[str] = (),
          ip_addresses: Sequence[str] = (), server: bool = False, client: bool = False,
          now: dt.datetime | None = None, days: int = 365, key_usage: bool = False,
          key_identifier: bool = False) -> KeyPair:
    """A leaf certificate signed by ``ca`` for a server, a client, or both (extended key
    usages), valid from ``now`` (backdated) for ``days`` but never past the CA.

    ``key_usage``: add a critical KeyUsage of digitalSignature only (all an EC TLS key does).
    ``key_identifier``: add the AuthorityKeyIdentifier of ``ca``'s key.
    """
    now = _utc_now(now)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = load_ec_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    # Never outlive the CA: a leaf valid past its issuer fails verification anyway.
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(_key_usage(cert_sign=False), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if key_identifier:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                        critical=False)
    return KeyPair(key_pem(key), cert_pem(builder.sign(ca_key, hashes.SHA256())))
