"""Keys and files of the local control plane that the CA primitives (:mod:`trackop.pki`)
do not cover: the service-account signing key, and files readable by this user only."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trackop.pki import key_pem


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
