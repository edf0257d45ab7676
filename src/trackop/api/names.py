"""Names trackop derives for a backend: its Secret, migration Job and default database (pure)."""

from __future__ import annotations

import hashlib
import re

# PostgreSQL's NAMEDATALEN is 64: identifiers are at most 63 bytes.
MAX_IDENTIFIER = 63


def connection_secret_name(backend_name: str) -> str:
    return f"{backend_name}-mlflow"


def migration_job_name(backend_name: str, migration_key: str) -> str:
    """``<name>-migrate-<hash>``: one Job per backend and MLflow version (and image)."""
    digest = hashlib.sha256(f"{backend_name}\0{migration_key}".encode()).hexdigest()[:8]
    return f"{backend_name}-migrate-{digest}"


def default_database_name(namespace: str, name: str) -> str:
    """``mlflow_<namespace>_<name>``, with a hash of the original names whenever the mapping
    to an identifier loses information ('-' and '.' become '_'), so two backends never
    derive the same database (``a-b``/``c`` and ``a``/``b-c`` would otherwise)."""
    base = f"mlflow_{namespace}_{name}"
    safe = re.sub(r"[^a-z0-9_]", "_", base.lower())
    if safe == base and len(safe) <= MAX_IDENTIFIER:
        return safe
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]
    return f"{safe[:MAX_IDENTIFIER - 9]}_{digest}"
