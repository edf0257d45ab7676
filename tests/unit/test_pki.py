import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from trackop import pki
from trackop_testbed.pki import write_private


def test_issued_certificate_chains_to_its_ca_with_sans_and_groups():
    ca = pki.make_ca("test-ca")
    leaf = pki.issue(ca, "admin", organizations=("system:masters",), ip_addresses=("127.0.0.1",),
                     dns_names=("localhost",), server=True, client=True)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_private_files_are_owner_only(tmp_path):
    path = write_private(tmp_path / "k.pem", b"secret")
    assert path.stat().st_mode & 0o777 == 0o600
