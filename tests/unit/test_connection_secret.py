"""trackop.specs.connection_secret: the connection URI and the connection Secret (pure)."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from helpers import OWNER, make_spec
from sqlalchemy.engine import make_url

from trackop.api.v1alpha1 import SpecError
from trackop.specs import connection_secret
from trackop.specs.migration_job import migration_job

PASSWORD = "p@ss:/w%rd#?&= ü"
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
SPEC = make_spec()


# ---- database_uri ------------------------------------------------------------------------

@pytest.mark.parametrize("password", [
    PASSWORD, "simple", "with space", "plus+sign", "back\\slash", "at@@", "'\"`", "%41", "ä€😀", "[::1]", "a/b?c=d#e",
])
def test_password_round_trips_through_sqlalchemy(password):
    url = make_url(connection_secret.database_uri(SPEC, password))
    assert url.password == password
    assert url.username == SPEC.role
    assert url.host == "pg.db.svc"
    assert url.port == 5432
    assert url.database == SPEC.database
    assert dict(url.query) == {"sslmode": "prefer"}


def test_raw_password_is_not_in_the_uri():
    uri = connection_secret.database_uri(SPEC, PASSWORD)
    assert PASSWORD not in uri
    assert quote(PASSWORD, safe="") in uri
    # The only '@' separates credentials from the host.
    assert uri.count("@") == 1


@pytest.mark.parametrize("driver, scheme", [("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")])
def test_scheme_follows_the_driver(driver, scheme):
    spec = make_spec({"postgres": {"driver": driver}})
    uri = connection_secret.database_uri(spec, "pw")
    assert uri.startswith(f"{scheme}://")
    assert make_url(uri).drivername == scheme


def test_uri_carries_port_and_ssl_mode():
    spec = make_spec({"postgres": {"external": {"port": 6543, "sslMode": "verify-full"}}})
    url = make_url(connection_secret.database_uri(spec, "pw"))
    assert url.port == 6543
    assert url.query["sslmode"] == "verify-full"


@pytest.mark.parametrize("host", ["fe80::1", "2001:db8::1"])
def test_ipv6_host_is_bracketed(host):
    spec = make_spec({"postgres": {"external": {"host": host}}})
    uri = connection_secret.database_uri(spec, PASSWORD)
    assert f"@[{host}]:5432/" in uri
    url = make_url(uri)
    assert url.host == host
    assert url.port == 5432
    assert url.password == PASSWORD


def test_ipv4_and_names_are_not_bracketed():
    for host in ("10.0.0.1", "pg.db.svc"):
        uri = connection_secret.database_uri(make_spec({"postgres": {"external": {"host": host}}}), "pw")
        assert f"@{host}:5432/" in uri


# ---- connection Secret -------------------------------------------------------------------

def test_connection_secret_data_keys_and_values():
    data = connection_secret.connection_secret_data(SPEC, PASSWORD)
    assert set(data) == {"MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "PGHOST", "PGPORT", "PGDATABASE",
                         "PGUSER", "PGPASSWORD", "PGSSLMODE",
                         # Direct mode (no server): each client's pool is kept to the budgeted size.
                         "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"}
    assert (data["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"], data["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) == ("2", "3")
    assert all(isinstance(value, str) for value in data.values())
    assert data["MLFLOW_BACKEND_STORE_URI"] == connection_secret.database_uri(SPEC, PASSWORD)
    assert data["MLFLOW_TRACKING_URI"] == data["MLFLOW_BACKEND_STORE_URI"]
    assert data["PGHOST"] == "pg.db.svc"
    assert data["PGPORT"] == "5432"
    assert data["PGDATABASE"] == SPEC.database
    assert data["PGUSER"] == SPEC.role
    assert data["PGPASSWORD"] == PASSWORD  # raw, for libpq
    assert data["PGSSLMODE"] == "prefer"


def test_ipv6_pghost_is_not_bracketed():
    spec = make_spec({"postgres": {"external": {"host": "fe80::1"}}})
    assert connection_secret.connection_secret_data(spec, "pw")["PGHOST"] == "fe80::1"


def test_connection_secret_body():
    body = connection_secret.connection_secret(SPEC, PASSWORD, OWNER)
    assert body["apiVersion"] == "v1" and body["kind"] == "Secret" and body["type"] == "Opaque"
    meta = body["metadata"]
    assert meta["name"] == "team-a-mlflow" == SPEC.connection_secret
    assert meta["namespace"] == "ml-platform"
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "trackop",
        "trackop.dev/backend": "team-a",
        "app.kubernetes.io/component": "connection",
    }
    assert meta["ownerReferences"] == [{
        "apiVersion": "trackop.dev/v1alpha1", "kind": "TrackingBackend", "name": "team-a",
        "uid": OWNER["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
    }]
    assert body["stringData"] == connection_secret.connection_secret_data(SPEC, PASSWORD)
    assert "psycopg" in meta["annotations"]["trackop.dev/driver"]
    # Nothing secret outside stringData.
    outside = json.dumps({k: v for k, v in body.items() if k != "stringData"}, ensure_ascii=False)
    assert PASSWORD not in outside and quote(PASSWORD, safe="") not in outside


def test_driver_annotation_follows_the_driver():
    body = connection_secret.connection_secret(make_spec({"postgres": {"driver": "psycopg2"}}), "pw", OWNER)
    assert body["metadata"]["annotations"]["trackop.dev/driver"].startswith("postgresql+psycopg2://")
    assert "psycopg2" in body["metadata"]["annotations"]["trackop.dev/driver"]


@pytest.mark.parametrize("name", ["n" * 45, "a-" * 22 + "b"])
def test_label_values_are_valid_for_a_long_backend_name(name):
    spec = make_spec(name=name)
    for body in (connection_secret.connection_secret(spec, "pw", OWNER), migration_job(spec, OWNER)):
        for value in body["metadata"]["labels"].values():
            assert len(value) <= 63 and _LABEL_VALUE.fullmatch(value), value
        assert body["metadata"]["labels"]["trackop.dev/backend"] == name
        # Object names: DNS-1123 subdomains; the Job's name is also its pods' job-name label value.
        assert len(body["metadata"]["name"]) <= 63 and _DNS1123_LABEL.fullmatch(body["metadata"]["name"])


def test_a_backend_name_too_long_for_labels_never_reaches_the_manifests():
    with pytest.raises(SpecError) as info:
        make_spec(name="n" * 46)
    assert info.value.field == "metadata.name"
