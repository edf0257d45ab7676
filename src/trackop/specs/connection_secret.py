"""The connection Secret (DESIGN.md) and the URIs in it, pure: spec and password in, keys and body out.

Also the operator's own SQLAlchemy URL (:func:`operator_uri`), built the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from ..api import tuning
from ..api.v1alpha1 import BackendSpec, PostgresEndpoint
from ..artifacts import locations
from .common import labels, owner_reference


def _host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def database_uri(spec: BackendSpec, password: str, server: PostgresEndpoint | None = None) -> str:
    """The SQLAlchemy URL MLflow uses; every part URL-encoded, so any password works.
    ``server``: another address of the same server (the operator's own way in)."""
    s = server or spec.postgres
    return (
        f"{spec.url_scheme}://{quote(spec.role, safe='')}:{quote(password, safe='')}"
        f"@{_host_for_uri(s.host)}:{s.port}/{quote(spec.database, safe='')}?sslmode={s.ssl_mode}"
    )


def operator_uri(server: PostgresEndpoint, user: str, password: str, database: str) -> str:
    """A SQLAlchemy URL for the operator's own in-process work (psycopg 3, which the operator
    bundles), e.g. the admin building the template database."""
    return (
        f"postgresql+psycopg://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{_host_for_uri(server.host)}:{server.port}/{quote(database, safe='')}?sslmode={server.ssl_mode}"
    )


def workloads_need_bucket_access(spec: BackendSpec) -> bool:
    """Clients write artifacts to the bucket themselves unless the server proxies them."""
    if spec.artifacts is None:
        return False
    server = spec.tracking_server
    return spec.injection_mode == "Direct" or server is None or not server.serve_artifacts


def bucket_env(spec: BackendSpec, secret_values: tuple[str, ...] | None) -> dict[str, str]:
    """What a client needs to reach the artifact store, as literal values (for the
    connection Secret): settings plus the credentials in ``secret_values``.

    A GCS service-account key has to be a file (GOOGLE_APPLICATION_CREDENTIALS takes a
    path), so Direct-mode clients of GCS use their own identity; only the server gets the
    key, mounted.
    """
    store = spec.artifacts
    if store is None:
        return {}
    location = locations.location_for(store)
    if store.kind == "s3":
        env = locations.s3_client_env(location)
        if secret_values:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = secret_values
        return env
    if store.kind == "gcs":
        return locations.gcs_client_env(location)
    env = {}
    if secret_values:
        env[locations.AZURE_KEY_ENV] = secret_values[0]
        if location.endpoint:
            env["AZURE_STORAGE_CONNECTION_STRING"] = locations.azure_connection_string(location, secret_values[0])
    return env


def connection_secret_data(spec: BackendSpec, password: str,
                           bucket_secret: tuple[str, ...] | None = None) -> dict[str, str]:
    """The connection Secret's keys (DESIGN.md). ``bucket_secret`` holds the store's
    credentials, copied only when workloads reach the store themselves (Direct mode, or
    no artifact proxy)."""
    uri = database_uri(spec, password)
    data = {
        "MLFLOW_TRACKING_URI": spec.tracking_server_uri if spec.injection_mode == "Server" else uri,
        "MLFLOW_BACKEND_STORE_URI": uri,
        "PGHOST": spec.postgres.host,
        "PGPORT": str(spec.postgres.port),
        "PGDATABASE": spec.database,
        "PGUSER": spec.role,
        "PGPASSWORD": password,
        "PGSSLMODE": spec.postgres.ssl_mode,
    }
    if spec.artifacts is not None:
        data["MLFLOW_ARTIFACT_ROOT"] = spec.artifacts.uri
    if spec.injection_mode == "Direct":
        # Each Direct client holds a SQLAlchemy pool: keep it to the budgeted size.
        data.update(tuning.pool_env(spec.effective_tuning))
    if workloads_need_bucket_access(spec):
        data.update(bucket_env(spec, bucket_secret))
    return data


def placeholder_data(spec: BackendSpec) -> dict[str, str]:
    """The connection Secret's keys for this spec, with "-" for every secret (password,
    bucket keys) and the real values of the rest: what the webhook's index keeps."""
    store = spec.artifacts
    placeholder = ("-",) * len(store.credential_keys) if store and store.credentials_secret else None
    return connection_secret_data(spec, "-", placeholder)


def connection_secret(spec: BackendSpec, password: str, owner: Mapping[str, Any],
                      bucket_secret: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec.connection_secret,
            "namespace": spec.namespace,
            "labels": labels(spec, "connection"),
            "annotations": {
                "trackop.dev/driver": f"{spec.url_scheme}:// needs the {spec.driver} Python package",
            },
            "ownerReferences": [owner_reference(owner)],
        },
        "stringData": connection_secret_data(spec, password, bucket_secret),
    }
