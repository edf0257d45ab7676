"""The webhook's own CA and serving certificate (pure: the clock is a parameter).

The API server calls the webhook over HTTPS and checks its certificate against the
``caBundle`` of the MutatingWebhookConfiguration. trackop makes a private CA, signs a
serving certificate for the webhook Service's DNS names with it, keeps both in a Secret
(:func:`to_secret_data`) and renews them before they expire (:func:`needs_rotation`,
:func:`rotate`).

Rollover without a window where the API server distrusts the webhook: a new CA is made
while the old one still has at least ``2 * cert_days`` to live, and the old CA stays in
``previous_ca_pems``, hence in :func:`ca_bundle`, until it expires. The caller must
publish the new bundle (old + new CA) in the webhook configuration *before* serving the
certificate signed by the new CA; during the overlap either certificate verifies.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .. import pki

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
PREVIOUS_CA = "previous-ca.crt"

DEFAULT_CA_DAYS = 3650
DEFAULT_CERT_DAYS = 90
DEFAULT_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class WebhookCerts:
    """PEM-encoded CA and serving pair, plus CAs from before a rollover still trusted."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    previous_ca_pems: tuple[bytes, ...] = ()


def _aware(now: dt.datetime) -> dt.datetime:
    # A naive datetime is ambiguous (local time or UTC?) and certificates are UTC.
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(dt.timezone.utc)


def _make_ca(now: dt.datetime, days: int) -> tuple[bytes, bytes]:
    # The serial in the name keeps successive CAs distinguishable in logs and bundles.
    serial = x509.random_serial_number()
    ca = pki.make_ca(f"trackop-webhook-ca-{serial % 10**8:08d}", now=now, days=days, serial=serial,
                     path_length=0, key_identifier=True)
    return ca.cert_pem, ca.key_pem


def _issue(ca_cert_pem: bytes, ca_key_pem: bytes, names: Sequence[str], ips: Sequence[str],
           now: dt.datetime, days: int) -> tuple[bytes, bytes]:
    if not names and not ips:
        # Clients match SANs only (the CN is ignored), so a cert without one is useless.
        raise ValueError("the serving certificate needs at least one DNS name or IP address")
    leaf = pki.issue(pki.KeyPair(ca_key_pem, ca_cert_pem), names[0] if names else ips[0], dns_names=names,
                     ip_addresses=ips, server=True, now=now, days=days, key_usage=True, key_identifier=True)
    return leaf.cert_pem, leaf.key_pem


def new_certs(service_dns_names: Sequence[str], ip_addresses: Sequence[str], now: dt.datetime, *,
              ca_days: int = DEFAULT_CA_DAYS, cert_days: int = DEFAULT_CERT_DAYS) -> WebhookCerts:
    """A fresh CA and a serving certificate for the given SANs, valid from ``now``."""
    now = _aware(now)
    ca_cert, ca_key = _make_ca(now, ca_days)
    cert, key = _issue(ca_cert, ca_key, service_dns_names, ip_addresses, now, cert_days)
    return WebhookCerts(ca_cert, ca_key, cert, key, ())


def certificate_sans(cert_pem: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """The DNS names and IP addresses (normalised text) a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    return (frozenset(sans.get_values_for_type(x509.DNSName)),
            frozenset(str(ip) for ip in sans.get_values_for_type(x509.IPAddress)))


def _ca_usable(ca: x509.Certificate, now: dt.datetime, cert_days: int) -> bool:
    # Long enough to sign at least two more serving certificates' lifetimes, so the
    # rollover happens with a full cert lifetime of overlap to spare.
    return ca.not_valid_before_utc <= now and ca.not_valid_after_utc - now > 2 * dt.timedelta(days=cert_days)


def needs_rotation(certs: WebhookCerts, now: dt.datetime, *, renew_before: dt.timedelta = DEFAULT_RENEW_BEFORE,
                   names: Sequence[str] | None = None, ips: Sequence[str] | None = None,
                   cert_days: int = DEFAULT_CERT_DAYS) -> str | None:
    """Why the certificates must be renewed now, or None when they are fine.

    ``names``/``ips``: the SANs wanted now (None: not checked).
    """
    now = _aware(now)
    ca = x509.load_pem_x509_certificate(certs.ca_cert_pem)
    cert = x509.load_pem_x509_certificate(certs.cert_pem)
    if ca.not_valid_before_utc > now:
        return f"the CA is not valid before {ca.not_valid_before_utc.isoformat()}"
    if not _ca_usable(ca, now, cert_days):
        return f"the CA expires at {ca.not_valid_after_utc.isoformat()}, within {2 * cert_days} days"
    if cert.not_valid_before_utc > now:
        return f"the serving certificate is not valid before {cert.not_valid_before_utc.isoformat()}"
    if cert.not_valid_after_utc - now <= renew_before:
        return f"the serving certificate expires at {cert.not_valid_after_utc.isoformat()}, within {renew_before}"
    # A hand-edited or half-written Secret: the pair no longer fits together.
    if cert.issuer != ca.subject or not _signed_by(cert, ca):
        return "the serving certificate is not signed by the current CA"
    if pki.load_ec_key(certs.key_pem).public_key() != cert.public_key():
        return "the serving key does not match the serving certificate"
    if pki.load_ec_key(certs.ca_key_pem).public_key() != ca.public_key():
        return "the CA key does not match the CA certificate"
    if names is not None or ips is not None:
        have_names, have_ips = certificate_sans(certs.cert_pem)
        want_names = frozenset(names or ())
        want_ips = frozenset(str(ipaddress.ip_address(ip)) for ip in ips or ())
        if (have_names, have_ips) != (want_names, want_ips):
            return (f"the serving certificate's names changed: has {sorted(have_names | have_ips)}, "
                    f"wants {sorted(want_names | want_ips)}")
    return None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _still_valid(pems: Sequence[bytes], now: dt.datetime) -> tuple[bytes, ...]:
    return tuple(p for p in pems if x509.load_pem_x509_certificate(p).not_valid_after_utc > now)


def rotate(certs: WebhookCerts, now: dt.datetime, names: Sequence[str], ips: Sequence[str], *,
           ca_days: int = DEFAULT_CA_DAYS, cert_days: int = DEFAULT_CERT_DAYS) -> WebhookCerts:
    """A new serving certificate from the same CA while the CA is usable (and its key
    fits); otherwise a new CA, keeping the old one in ``previous_ca_pems`` so the bundle
    trusts both during the overlap. Expired previous CAs are dropped."""
    now = _aware(now)
    ca = x509.load_pem_x509_certificate(certs.ca_cert_pem)
    try:
        ca_key_fits = pki.load_ec_key(certs.ca_key_pem).public_key() == ca.public_key()
    except ValueError:
        ca_key_fits = False
    if ca_key_fits and _ca_usable(ca, now, cert_days):
        cert, key = _issue(certs.ca_cert_pem, certs.ca_key_pem, names, ips, now, cert_days)
        return WebhookCerts(certs.ca_cert_pem, certs.ca_key_pem, cert, key,
                            _still_valid(certs.previous_ca_pems, now))
    fresh = new_certs(names, ips, now, ca_days=ca_days, cert_days=cert_days)
    previous = _still_valid((certs.ca_cert_pem, *certs.previous_ca_pems), now)
    return WebhookCerts(fresh.ca_cert_pem, fresh.ca_key_pem, fresh.cert_pem, fresh.key_pem, previous)


def ca_bundle(certs: WebhookCerts, now: dt.datetime | None = None) -> bytes:
    """The webhook configuration's ``caBundle`` (PEM, before base64): the current CA and
    the previous ones, those expired at ``now`` left out (None: all; :func:`rotate`
    already drops the expired ones)."""
    previous = certs.previous_ca_pems if now is None else _still_valid(certs.previous_ca_pems, _aware(now))
    return b"".join(_with_newline(p) for p in (certs.ca_cert_pem, *previous))


def _with_newline(pem: bytes) -> bytes:
    return pem if pem.endswith(b"\n") else pem + b"\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_secret_data(certs: WebhookCerts) -> dict[str, str]:
    """A Secret's ``data`` (base64 values, as the API returns them). ``tls.crt`` and
    ``tls.key`` make it usable as a ``kubernetes.io/tls`` Secret too."""
    return {
        TLS_CERT: _b64(certs.cert_pem),
        TLS_KEY: _b64(certs.key_pem),
        CA_CERT: _b64(certs.ca_cert_pem),
        CA_KEY: _b64(certs.ca_key_pem),
        PREVIOUS_CA: _b64(b"".join(_with_newline(p) for p in certs.previous_ca_pems)),
    }


def from_secret_data(data: Mapping[str, str]) -> WebhookCerts:
    """The inverse of :func:`to_secret_data`; ValueError when a key is missing or does not
    hold a certificate or key (the caller then makes new ones)."""
    def decoded(key: str) -> bytes:
        if not data.get(key):
            raise ValueError(f"the webhook certificate Secret lacks {key}")
        try:
            return base64.b64decode(data[key], validate=True)
        except ValueError as error:
            raise ValueError(f"{key} is not base64: {error}") from None

    try:
        ca_cert, ca_key, cert, key = (decoded(k) for k in (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY))
        x509.load_pem_x509_certificate(ca_cert)
        x509.load_pem_x509_certificate(cert)
        pki.load_ec_key(ca_key)
        pki.load_ec_key(key)
        previous_raw = base64.b64decode(data.get(PREVIOUS_CA) or "", validate=True)
        previous = tuple(pki.cert_pem(c) for c in x509.load_pem_x509_certificates(previous_raw)) if previous_raw else ()
    except (ValueError, TypeError) as error:
        raise ValueError(f"the webhook certificate Secret is invalid: {error}") from None
    return WebhookCerts(ca_cert, ca_key, cert, key, previous)
