"""Keys and files of the local control plane that the CA primitives (:mod:`trackop.pki`)
do not cover: the service-account signing key, kubeconfigs with embedded client
certificates, and files readable by this user only."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trackop.pki import KeyPair, key_pem


def make_service_account_key() -> tuple[bytes, bytes]:
    """RSA key pair that signs and verifies service-account tokens: (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_pem(key), public


def write_private(path: Path, data: bytes) -> Path:
    """Write key material readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def kubeconfig(server: str, ca_pem: bytes, client: KeyPair, user: str) -> bytes:
    """A kubeconfig for ``server`` with the CA and the client's certificate and key embedded."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "trackop-testbed",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(client.cert_pem),
                                          "client-key-data": b64(client.key_pem)}}],
        "contexts": [{"name": "trackop-testbed", "context": {"cluster": "trackop-testbed", "user": user}}],
        "current-context": "trackop-testbed",
    }
    return yaml.safe_dump(config).encode()
