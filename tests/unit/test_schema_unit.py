"""trackop.schema without a database: revisions, redaction, cheap import."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
import sys
from urllib.parse import quote

import pytest

from trackop import schema


def test_head_is_one_of_the_known_revisions():
    assert schema.head_revision() in schema.known_revisions()
    assert len(schema.known_revisions()) > 50  # MLflow 3.x ships dozens of migrations


def test_bundled_version_is_the_installed_mlflow_skinny():
    assert schema.BUNDLED_MLFLOW_VERSION == importlib.metadata.version("mlflow-skinny")


def test_lock_key_is_a_stable_signed_64_bit_value():
    digest = hashlib.sha256(b"trackop.dev/mlflow-migrate").digest()[:8]
    assert schema.MIGRATION_LOCK_KEY == int.from_bytes(digest, "big", signed=True)
    assert -(2**63) <= schema.MIGRATION_LOCK_KEY < 2**63


def test_importing_the_module_does_not_import_mlflow_or_alembic():
    code = "import sys, trackop.schema; print(sorted(m for m in ('mlflow', 'alembic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_redact_masks_every_secret_and_the_longest_first():
    url = "postgresql+psycopg://r:s3cret@h:5432/db"
    text = f"failed on {url}; password s3cret; again s3cret"
    assert schema.redact(text, [None, "", "s3cret", url]) == "failed on ***; password ***; again ***"
    assert schema.redact("nothing here", ["s3cret"]) == "nothing here"


PASSWORD = "p@ss:/w%rd#?x"
URL = f"postgresql+psycopg://mlflow_a:{quote(PASSWORD, safe='')}@pg.db.svc:5432/mlflow_a?sslmode=require"


def test_error_messages_never_carry_the_url_or_password():
    raw = RuntimeError(
        f"boom at {URL} with {PASSWORD} and {quote(PASSWORD, safe='')}\n[SQL: SELECT 1]\n[parameters: {{'x': 1}}]"
    )
    message = str(schema._error("connecting", URL, raw))
    for secret in (URL, PASSWORD, quote(PASSWORD, safe=""), "[SQL:"):
        assert secret not in message
    assert message.startswith("connecting failed for database 'mlflow_a' on pg.db.svc:5432 as role 'mlflow_a'")
    assert "RuntimeError" in message


def test_an_unparsable_url_is_reported_without_echoing_it():
    bad = f"nonsense://u:{PASSWORD}@@host:notaport/db"
    with pytest.raises(schema.SchemaMigrationError) as caught:
        schema.migrate(bad)
    assert bad not in str(caught.value) and PASSWORD not in str(caught.value)
