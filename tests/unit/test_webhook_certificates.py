"""trackop.webhook.certificates: the webhook's CA and serving certificate, rotation and rollover (pure)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from trackop.webhook import certificates as tls

NAMES = ["trackop-webhook", "trackop-webhook.trackop-system.svc"]
IPS = ["127.0.0.1"]
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def bundle_verifies(bundle: bytes, leaf_pem: bytes, now: dt.datetime) -> bool:
    """The API server's check, reduced: some CA in the bundle issued the leaf, valid at ``now``."""
    leaf = cert(leaf_pem)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return False
    for ca in x509.load_pem_x509_certificates(bundle):
        if ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            try:
                leaf.verify_directly_issued_by(ca)
                return True
            except Exception:
                continue
    return False


@pytest.fixture(scope="module")
def certs() -> tls.WebhookCerts:
    return tls.new_certs(NAMES, IPS, T0)


def test_chain_sans_and_usages(certs):
    ca, leaf = cert(certs.ca_cert_pem), cert(certs.cert_pem)
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == NAMES
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert tls.certificate_sans(certs.cert_pem) == (frozenset(NAMES), frozenset(IPS))
    assert leaf.not_valid_after_utc == T0 + 90 * DAY
    assert ca.not_valid_after_utc == T0 + 3650 * DAY
    assert leaf.not_valid_before_utc < T0  # backdated for clock skew
    assert tls.ca_bundle(certs) == certs.ca_cert_pem


def test_a_real_tls_handshake_verifies_the_name(tmp_path):
    # OpenSSL's own chain and hostname checks, in memory (no socket), at the real time.
    now = dt.datetime.now(dt.timezone.utc)
    fresh = tls.new_certs(NAMES, IPS, now)
    (tmp_path / "c.pem").write_bytes(fresh.cert_pem)
    (tmp_path / "k.pem").write_bytes(fresh.key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    def handshake(hostname: str) -> None:
        client_ctx = ssl.create_default_context(cadata=tls.ca_bundle(fresh).decode())
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        done = {"c": False, "s": False}
        for _ in range(10):
            for side, obj, out, peer_in in (("c", client, c_out, s_in), ("s", server, s_out, c_in)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                peer_in.write(out.read())
            if all(done.values()):
                return
        raise AssertionError("handshake did not finish")

    handshake("trackop-webhook.trackop-system.svc")
    handshake("127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("other.trackop-system.svc")


def test_needs_rotation_at_different_times(certs):
    assert tls.needs_rotation(certs, T0) is None
    assert tls.needs_rotation(certs, T0 + 59 * DAY, names=NAMES, ips=IPS) is None
    assert "serving certificate expires" in tls.needs_rotation(certs, T0 + 61 * DAY)
    assert "serving certificate expires" in tls.needs_rotation(certs, T0 + 200 * DAY)  # already expired
    assert "serving certificate expires" in tls.needs_rotation(certs, T0 + 10 * DAY, renew_before=81 * DAY)
    assert "CA is not valid before" in tls.needs_rotation(certs, T0 - DAY)
    assert "CA expires" in tls.needs_rotation(certs, T0 + (3650 - 179) * DAY)
    assert "CA expires" in tls.needs_rotation(certs, T0 + 4000 * DAY)


def test_needs_rotation_when_the_names_change(certs):
    assert "names changed" in tls.needs_rotation(certs, T0, names=NAMES + ["extra.svc"], ips=IPS)
    assert "names changed" in tls.needs_rotation(certs, T0, names=NAMES, ips=[])
    assert tls.needs_rotation(certs, T0, names=list(reversed(NAMES)), ips=["127.0.0.1"]) is None


def test_needs_rotation_when_the_pair_does_not_fit(certs):
    other = tls.new_certs(NAMES, IPS, T0)
    assert "not signed by the current CA" in tls.needs_rotation(
        tls.WebhookCerts(certs.ca_cert_pem, certs.ca_key_pem, other.cert_pem, other.key_pem), T0)
    assert "serving key does not match" in tls.needs_rotation(
        tls.WebhookCerts(certs.ca_cert_pem, certs.ca_key_pem, certs.cert_pem, other.key_pem), T0)
    assert "CA key does not match" in tls.needs_rotation(
        tls.WebhookCerts(certs.ca_cert_pem, other.ca_key_pem, certs.cert_pem, certs.key_pem), T0)


def test_naive_time_is_refused(certs):
    with pytest.raises(ValueError, match="timezone"):
        tls.needs_rotation(certs, dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="DNS name or IP"):
        tls.new_certs([], [], T0)


def test_rotate_keeps_a_good_ca_and_renews_the_serving_certificate(certs):
    now = T0 + 61 * DAY
    renewed = tls.rotate(certs, now, NAMES + ["new.svc"], IPS)
    assert (renewed.ca_cert_pem, renewed.ca_key_pem, renewed.previous_ca_pems) == \
        (certs.ca_cert_pem, certs.ca_key_pem, ())
    assert renewed.cert_pem != certs.cert_pem
    cert(renewed.cert_pem).verify_directly_issued_by(cert(certs.ca_cert_pem))
    assert "new.svc" in tls.certificate_sans(renewed.cert_pem)[0]
    assert tls.needs_rotation(renewed, now, names=NAMES + ["new.svc"], ips=IPS) is None
    assert "serving certificate is not valid before" in tls.needs_rotation(renewed, T0 + 30 * DAY)


def test_ca_rollover_keeps_the_old_ca_in_the_bundle_until_it_expires():
    old = tls.new_certs(NAMES, IPS, T0, ca_days=365)
    # 365 - 180 days: the CA has just under two serving lifetimes left.
    rollover = T0 + 186 * DAY
    assert "CA expires" in tls.needs_rotation(old, rollover)
    new = tls.rotate(old, rollover, NAMES, IPS, ca_days=365)
    assert new.ca_cert_pem != old.ca_cert_pem and new.previous_ca_pems == (old.ca_cert_pem,)
    cert(new.cert_pem).verify_directly_issued_by(cert(new.ca_cert_pem))
    assert tls.needs_rotation(new, rollover) is None
    bundle = tls.ca_bundle(new, rollover)
    assert x509.load_pem_x509_certificates(bundle) == [cert(new.ca_cert_pem), cert(old.ca_cert_pem)]

    old_ca_end = cert(old.ca_cert_pem).not_valid_after_utc
    assert tls.ca_bundle(new, old_ca_end - DAY) == bundle
    assert tls.ca_bundle(new, old_ca_end + DAY) == new.ca_cert_pem
    later = tls.rotate(new, old_ca_end + DAY, NAMES, IPS)  # a serving renewal drops the expired CA
    assert later.ca_cert_pem == new.ca_cert_pem and later.previous_ca_pems == ()


def test_daily_checks_over_three_years_never_leave_a_gap():
    """The operator's timer, simulated: each day it rotates when told to. The certificate
    served is always trusted by the published bundle, and on a CA rollover the previous
    serving certificate is trusted by the new bundle too (the overlap)."""
    current = tls.new_certs(NAMES, IPS, T0, ca_days=365)
    rollovers = renewals = 0
    for day in range(3 * 365):
        now = T0 + day * DAY
        if tls.needs_rotation(current, now, names=NAMES, ips=IPS):
            rotated = tls.rotate(current, now, NAMES, IPS, ca_days=365)
            if rotated.ca_cert_pem != current.ca_cert_pem:
                rollovers += 1
                assert bundle_verifies(tls.ca_bundle(rotated, now), current.cert_pem, now)
            else:
                renewals += 1
            current = rotated
        assert bundle_verifies(tls.ca_bundle(current, now), current.cert_pem, now), now
        assert len(current.previous_ca_pems) <= 1
    assert rollovers == 5 and renewals >= 6


def test_rotate_replaces_a_ca_whose_key_is_lost(certs):
    other = tls.new_certs(NAMES, IPS, T0)
    broken = tls.WebhookCerts(certs.ca_cert_pem, other.ca_key_pem, certs.cert_pem, certs.key_pem)
    fixed = tls.rotate(broken, T0, NAMES, IPS)
    assert fixed.ca_cert_pem != certs.ca_cert_pem and fixed.previous_ca_pems == (certs.ca_cert_pem,)
    assert tls.needs_rotation(fixed, T0) is None


def test_leaf_never_outlives_its_ca():
    short = tls.new_certs(NAMES, IPS, T0, ca_days=30, cert_days=90)
    assert cert(short.cert_pem).not_valid_after_utc == cert(short.ca_cert_pem).not_valid_after_utc


def test_secret_data_round_trip(certs):
    rolled = tls.rotate(tls.new_certs(NAMES, IPS, T0, ca_days=365), T0 + 300 * DAY, NAMES, IPS, ca_days=365)
    for value in (certs, rolled):
        data = tls.to_secret_data(value)
        assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key", "previous-ca.crt"}
        assert base64.b64decode(data["tls.crt"]) == value.cert_pem
        assert tls.from_secret_data(data) == value
    assert tls.to_secret_data(certs)["previous-ca.crt"] == ""


def test_secret_data_without_previous_key_and_broken_secrets(certs):
    data = tls.to_secret_data(certs)
    del data["previous-ca.crt"]
    assert tls.from_secret_data(data) == certs
    for key in ("tls.crt", "tls.key", "ca.crt", "ca.key"):
        missing = {k: v for k, v in data.items() if k != key}
        with pytest.raises(ValueError, match=key):
            tls.from_secret_data(missing)
    with pytest.raises(ValueError):
        tls.from_secret_data({**data, "tls.crt": "not base64!"})
    with pytest.raises(ValueError):
        tls.from_secret_data({**data, "ca.key": base64.b64encode(b"garbage").decode()})
    with pytest.raises(ValueError):
        tls.from_secret_data({**data, "previous-ca.crt": base64.b64encode(b"garbage").decode()})
