"""trackop.api: spec parsing, defaults, validation and derived names (pure, no cluster)."""

from __future__ import annotations

import copy
import hashlib
import re

import pytest
from helpers import deep_merge

from trackop.api.names import MAX_IDENTIFIER, default_database_name, migration_job_name
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import DEFAULT_MLFLOW_VERSION, MAX_BACKEND_NAME, SSL_MODES, BackendSpec, SecretRef, SpecError
from trackop.api.validation import check_backend_name, check_identifier

NAMESPACE = "ml-platform"
NAME = "team-a"

# Kubernetes object names: DNS-1123 subdomain (labels joined by dots), at most 253;
# a Job name also ends up in the pod label job-name, so at most 63.
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_IDENT = re.compile(r"[a-z_][a-z0-9_]*")
# Backend names: a DNS-1035 label of at most 45 characters (room for "-migrate-<hash>").
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def base_spec() -> dict:
    return {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}}}}


def make_spec(overrides: dict | None = None, namespace: str = NAMESPACE, name: str = NAME) -> BackendSpec:
    """parse of a minimal valid spec with ``overrides`` merged in (nested dicts merge)."""
    return parse(namespace, name, deep_merge(copy.deepcopy(base_spec()), overrides or {}))


def spec_error(overrides: dict, namespace: str = NAMESPACE, name: str = NAME) -> SpecError:
    with pytest.raises(SpecError) as info:
        make_spec(overrides, namespace, name)
    return info.value


# ---- defaults ----------------------------------------------------------------------------

def test_defaults():
    spec = make_spec()
    assert spec.namespace == NAMESPACE and spec.name == NAME
    assert spec.postgres.host == "pg.db.svc"
    assert spec.postgres.port == 5432
    assert spec.postgres.ssl_mode == "prefer"
    assert spec.postgres.admin_secret == "pg-admin"
    assert spec.driver == "psycopg"
    assert spec.url_scheme == "postgresql+psycopg"
    assert spec.mlflow_version == "3.17.2" == DEFAULT_MLFLOW_VERSION
    assert spec.migration == "Inline"
    assert spec.migration_image == "ghcr.io/mlflow/mlflow:v3.17.2"
    assert spec.deletion_policy == "Retain"
    assert spec.password_secret is None
    # '-' is mapped to '_', so the name carries a hash of "ml-platform/team-a".
    assert spec.database == "mlflow_ml_platform_team_a_276dc659" == default_database_name(NAMESPACE, NAME)
    assert spec.role == spec.database
    assert spec.connection_secret == "team-a-mlflow"
    assert spec.migration_job == migration_job_name(NAME, "3.17.2 ghcr.io/mlflow/mlflow:v3.17.2")


def test_explicit_values_are_kept():
    spec = make_spec({
        "postgres": {
            "external": {"port": 6543, "sslMode": "verify-full"},
            "database": "mlflow_x", "role": "mlflow_x_owner", "driver": "psycopg2",
            "passwordSecretRef": {"name": "my-pw"},
        },
        "schema": {"mlflowVersion": "3.1.0", "migration": "Job"},
        "deletionPolicy": "Delete",
    })
    assert spec.postgres.port == 6543
    assert spec.postgres.ssl_mode == "verify-full"
    assert (spec.database, spec.role) == ("mlflow_x", "mlflow_x_owner")
    assert spec.driver == "psycopg2" and spec.url_scheme == "postgresql+psycopg2"
    assert spec.password_secret == SecretRef("my-pw", "password")
    assert spec.mlflow_version == "3.1.0"
    assert spec.migration_image == "ghcr.io/mlflow/mlflow:v3.1.0"
    assert spec.migration == "Job"
    assert spec.deletion_policy == "Delete"


def test_role_defaults_to_an_explicit_database():
    spec = make_spec({"postgres": {"database": "custom_db"}})
    assert spec.role == "custom_db"


def test_owner_marker_names_namespace_and_name():
    marker = make_spec().owner_marker
    assert f"{NAMESPACE}/{NAME}" in marker
    assert make_spec(name="team-b").owner_marker != marker
    assert make_spec(namespace="other").owner_marker != marker


@pytest.mark.parametrize("mode", SSL_MODES)
def test_every_ssl_mode_is_accepted(mode):
    assert make_spec({"postgres": {"external": {"sslMode": mode}}}).postgres.ssl_mode == mode


@pytest.mark.parametrize("host", ["pg", "pg.db.svc", "10.0.0.1", "fe80::1", "2001:db8::1", "PG-1.Example.com",
                                  "::1", "::ffff:10.0.0.1"])
def test_valid_hosts(host):
    assert make_spec({"postgres": {"external": {"host": host}}}).postgres.host == host


@pytest.mark.parametrize("port", [1, 5432, 65535])
def test_valid_ports(port):
    assert make_spec({"postgres": {"external": {"port": port}}}).postgres.port == port


# ---- validation errors name the field ----------------------------------------------------

HOSTILE_IDENTIFIERS = [
    'a"b', "a'b", "db;drop", "db--x", "--", "my db", "MyDb", "UPPER", "café", "naïve", "ß",
    "1abc", "a-b", "a.b", "a$b", " ", "a\x00b", "x" * 64, "\u0430bc",  # Cyrillic a
]


@pytest.mark.parametrize("value", HOSTILE_IDENTIFIERS)
def test_hostile_database_names_raise_on_the_database_field(value):
    assert spec_error({"postgres": {"database": value, "role": "ok_role"}}).field == "spec.postgres.database"


@pytest.mark.parametrize("value", HOSTILE_IDENTIFIERS)
def test_hostile_role_names_raise_on_the_role_field(value):
    assert spec_error({"postgres": {"database": "ok_db", "role": value}}).field == "spec.postgres.role"


def test_identifier_of_63_chars_is_accepted_and_64_is_not():
    assert make_spec({"postgres": {"database": "d" * 63}}).database == "d" * 63
    err = spec_error({"postgres": {"database": "d" * 64, "role": "r"}})
    assert err.field == "spec.postgres.database"
    assert "63" in str(err)


@pytest.mark.parametrize("value", ["postgres", "template0", "template1"])
def test_reserved_database_names(value):
    err = spec_error({"postgres": {"database": value, "role": "ok_role"}})
    assert err.field == "spec.postgres.database"
    assert "reserved" in str(err)


@pytest.mark.parametrize("value", ["postgres", "public", "current_user", "session_user", "current_role", "none",
                                   "pg_monitor", "pg_read_all_data", "pg_"])
def test_reserved_role_names(value):
    err = spec_error({"postgres": {"database": "ok_db", "role": value}})
    assert err.field == "spec.postgres.role"
    assert "reserved" in str(err)


def test_role_defaulted_from_a_pg_database_is_still_rejected():
    # The role defaults to the database name; a pg_ role must never be created that way.
    # The role is not in the spec, so the error is reported on the database the user wrote.
    err = spec_error({"postgres": {"database": "pg_stats"}})
    assert err.field == "spec.postgres.database"
    assert "pg_" in str(err)


@pytest.mark.parametrize("value", ["public", "current_user", "session_user", "current_role", "none"])
def test_role_defaulted_from_a_reserved_role_name_is_reported_on_the_database(value):
    err = spec_error({"postgres": {"database": value}})
    assert err.field == "spec.postgres.database"
    assert "reserved" in str(err)


def test_explicit_role_errors_stay_on_the_role_field():
    assert spec_error({"postgres": {"database": "pg_stats", "role": "pg_x"}}).field == "spec.postgres.role"


@pytest.mark.parametrize("field, value", [
    ("database", "mlflow\n"), ("role", "mlflow\n"),
])
def test_identifier_with_trailing_newline_is_rejected(field, value):
    overrides = {"postgres": {"database": "ok_db", "role": "ok_role"}}
    overrides["postgres"][field] = value
    assert spec_error(overrides).field == f"spec.postgres.{field}"


@pytest.mark.parametrize("host", [
    "", "-pg", "pg-", "pg db", "pg;rm", "user@pg", "pg/db", "pg?x=1", "pg#x", "pg%20", "pg_db", "[::1]",
    "a" * 254, "pg\tx", "ü.example.com",
])
def test_bad_hosts(host):
    assert spec_error({"postgres": {"external": {"host": host}}}).field == "spec.postgres.external.host"


def test_missing_host():
    spec = base_spec()
    del spec["postgres"]["external"]["host"]
    with pytest.raises(SpecError) as info:
        parse(NAMESPACE, NAME, spec)
    assert info.value.field == "spec.postgres.external.host"


@pytest.mark.parametrize("host", ["pg.db.svc:5432", "10.0.0.1:5432", "[::1]:5432", "pg:", ":5432"])
def test_host_with_a_port_is_rejected(host):
    assert spec_error({"postgres": {"external": {"host": host}}}).field == "spec.postgres.external.host"


@pytest.mark.parametrize("host", ["::1", "2001:db8::", "::"])
def test_ipv6_literals_starting_or_ending_with_colons_are_accepted(host):
    assert make_spec({"postgres": {"external": {"host": host}}}).postgres.host == host


@pytest.mark.parametrize("host", ["pg.db.svc\n", "10.0.0.1\n", "::1\n"])
def test_host_with_trailing_newline_is_rejected(host):
    assert spec_error({"postgres": {"external": {"host": host}}}).field == "spec.postgres.external.host"


@pytest.mark.parametrize("host", [5432, True, ["pg"], {"name": "pg"}])
def test_non_string_host_is_rejected(host):
    assert spec_error({"postgres": {"external": {"host": host}}}).field == "spec.postgres.external.host"


@pytest.mark.parametrize("port", [0, -1, 65536, 70000, "5432", 5432.0, [5432]])
def test_bad_ports(port):
    assert spec_error({"postgres": {"external": {"port": port}}}).field == "spec.postgres.external.port"


@pytest.mark.parametrize("port", [True, False])
def test_boolean_port_is_rejected(port):
    assert spec_error({"postgres": {"external": {"port": port}}}).field == "spec.postgres.external.port"


@pytest.mark.parametrize("mode", ["PREFER", "verify_full", "on", "", "strict"])
def test_bad_ssl_mode(mode):
    assert spec_error({"postgres": {"external": {"sslMode": mode}}}).field == "spec.postgres.external.sslMode"


@pytest.mark.parametrize("driver", ["psycopg3", "asyncpg", "pg8000", "PSYCOPG", ""])
def test_bad_driver(driver):
    assert spec_error({"postgres": {"driver": driver}}).field == "spec.postgres.driver"


@pytest.mark.parametrize("version", ["3.17", "v3.17.2", "3.17.2rc1", "latest", "3.17.2; rm -rf /", "3..2", "",
                                     "3.17.2 "])
def test_bad_mlflow_version(version):
    assert spec_error({"schema": {"mlflowVersion": version}}).field == "spec.schema.mlflowVersion"


def test_mlflow_version_with_trailing_newline_is_rejected():
    assert spec_error({"schema": {"mlflowVersion": "3.17.2\n"}}).field == "spec.schema.mlflowVersion"


@pytest.mark.parametrize("version", [3, 3.17, ["3.17.2"]])
def test_non_string_mlflow_version_is_rejected(version):
    assert spec_error({"schema": {"mlflowVersion": version}}).field == "spec.schema.mlflowVersion"


@pytest.mark.parametrize("migration", ["inline", "Pod", ""])
def test_bad_migration(migration):
    assert spec_error({"schema": {"migration": migration}}).field == "spec.schema.migration"


@pytest.mark.parametrize("policy", ["delete", "Orphan", ""])
def test_bad_deletion_policy(policy):
    assert spec_error({"deletionPolicy": policy}).field == "spec.deletionPolicy"


@pytest.mark.parametrize("spec", [{}, {"postgres": {}}, {"postgres": {"external": None}},
                                  {"postgres": {"external": {}}}])
def test_missing_external(spec):
    with pytest.raises(SpecError) as info:
        parse(NAMESPACE, NAME, spec)
    assert info.value.field == "spec.postgres.external"


@pytest.mark.parametrize("ref", [None, {}, {"name": ""}, {"name": None}, "MISSING"])
def test_missing_admin_secret_ref(ref):
    spec = base_spec()
    if ref == "MISSING":
        del spec["postgres"]["external"]["adminSecretRef"]
    else:
        spec["postgres"]["external"]["adminSecretRef"] = ref
    with pytest.raises(SpecError) as info:
        parse(NAMESPACE, NAME, spec)
    assert info.value.field == "spec.postgres.external.adminSecretRef.name"


def test_spec_error_message_starts_with_the_field():
    err = spec_error({"postgres": {"driver": "nope"}})
    assert str(err).startswith("spec.postgres.driver: ")
    assert isinstance(err, ValueError)


def test_password_secret_ref_key():
    spec = make_spec({"postgres": {"passwordSecretRef": {"name": "pw", "key": "secret"}}})
    assert spec.password_secret == SecretRef("pw", "secret")


@pytest.mark.parametrize("ref", [{"key": "password"}, {"name": ""}, {"name": None, "key": "k"}])
def test_password_secret_ref_without_name_is_a_spec_error(ref):
    err = spec_error({"postgres": {"passwordSecretRef": ref}})
    assert err.field == "spec.postgres.passwordSecretRef.name"


# ---- default_database_name ---------------------------------------------------------------

def _hashed(namespace: str, name: str) -> str:
    """The documented rule for names that lose information: mapped, cut to 54, '_' + 8 hex."""
    mapped = re.sub(r"[^a-z0-9_]", "_", f"mlflow_{namespace}_{name}".lower())
    return f"{mapped[:54]}_{hashlib.sha256(f'{namespace}/{name}'.encode()).hexdigest()[:8]}"


def test_default_database_name_short():
    # Only [a-z0-9] on both sides: nothing is lost, the name is kept as is.
    assert default_database_name("mlplatform", "teama") == "mlflow_mlplatform_teama"
    assert default_database_name("ns", "app1") == "mlflow_ns_app1"
    # Any '-', '.' or upper-case letter is mapped, and then the name carries a hash of "ns/name".
    assert default_database_name("ml-platform", "team-a") == "mlflow_ml_platform_team_a_276dc659"
    assert default_database_name("ml-platform", "team-a") == _hashed("ml-platform", "team-a")
    assert default_database_name("NS", "My.App-1") == "mlflow_ns_my_app_1_750586e3" == _hashed("NS", "My.App-1")


@pytest.mark.parametrize("namespace, name", [
    ("ns", "n" * 80), ("a" * 63, "b" * 253), ("x-y.z", "Q.R-S" * 30), ("ns", "ünïcode-näme"), ("a" * 63, "b" * 45),
    ("ml-platform", "t" * 45), ("ns", "a-b"),
])
def test_default_database_name_is_a_valid_identifier(namespace, name):
    result = default_database_name(namespace, name)
    assert len(result.encode()) <= MAX_IDENTIFIER
    assert _IDENT.fullmatch(result), result
    # And it passes the same validation parse applies.
    assert check_identifier("f", result, frozenset()) == result


@pytest.mark.parametrize("namespace, name", [
    ("ns", "n" * 45), ("a" * 63, "b" * 45), ("ml-platform", "t-" * 22 + "t"), ("ns", "a-b"), ("abc", "def"),
])
def test_parse_derives_the_default_database_for_any_accepted_backend_name(namespace, name):
    spec = make_spec(namespace=namespace, name=name)
    assert spec.database == default_database_name(namespace, name)
    assert spec.role == spec.database
    assert len(spec.database) <= MAX_IDENTIFIER and _IDENT.fullmatch(spec.database)


def test_default_database_name_exactly_63_has_no_suffix_and_64_gets_one():
    fits = "n" * (63 - len("mlflow_ns_"))
    assert default_database_name("ns", fits) == f"mlflow_ns_{fits}"
    long = default_database_name("ns", fits + "n")
    assert len(long) == 63
    assert re.fullmatch(r"mlflow_ns_n+_[0-9a-f]{8}", long)
    assert long == _hashed("ns", fits + "n")


def test_default_database_name_hash_is_stable():
    name = "n" * 80
    assert default_database_name("ns", name) == default_database_name("ns", name)
    # Pinned: a change here would move every existing long-named backend to a new database.
    assert default_database_name("ns", name) == "mlflow_ns_nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn_0389fef4"


def test_long_names_differing_only_at_the_end_differ():
    a = default_database_name("ns", "x" * 100 + "-a")
    b = default_database_name("ns", "x" * 100 + "-b")
    assert a != b
    assert a[:54] == b[:54]
    assert len(a) == len(b) == 63


@pytest.mark.parametrize("first, second", [
    (("a-b", "c"), ("a", "b-c")),
    (("a.b", "c"), ("a-b", "c")),
    (("ns", "team-a"), ("ns", "team.a")),
    (("ns", "Team"), ("ns", "team")),
    (("ns", "team-a"), ("ns", "team_a")),
])
def test_default_database_name_does_not_collide_across_namespaces(first, second):
    assert default_database_name(*first) != default_database_name(*second)


# ---- backend names -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "team-a", "t0", "x" * 45, "a-" * 22 + "b"])
def test_backend_names_up_to_45_characters_are_accepted(name):
    assert check_backend_name(name) == name
    assert make_spec(name=name).name == name


@pytest.mark.parametrize("name", [
    "x" * 46, "y" * 253, "a-" * 30 + "b", "team.a", "a" * 39 + ".b", "Team-a", "1team", "-team", "team-", "team_a",
    "team a", "", "team-a\n", "tëam",
])
def test_invalid_backend_names_are_rejected_on_metadata_name(name):
    with pytest.raises(SpecError) as info:
        check_backend_name(name)
    assert info.value.field == "metadata.name"
    assert spec_error({}, name=name).field == "metadata.name"


def test_backend_name_error_names_the_limit():
    assert "45" in str(spec_error({}, name="x" * 46))


# ---- migration_job_name ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["team-a", "a", "x" * 45, "a-" * 22 + "b", "z" * 44 + "9"])
def test_migration_job_name_is_a_valid_kubernetes_name(name):
    check_backend_name(name)  # every name parse accepts
    job = migration_job_name(name, "3.17.2 ghcr.io/mlflow/mlflow:v3.17.2")
    # The Job name is also the value of its pods' job-name label: at most 63, a DNS label.
    assert len(job) <= 62
    assert _DNS1123_SUBDOMAIN.fullmatch(job), job
    assert _DNS1035_LABEL.fullmatch(job) and _LABEL_VALUE.fullmatch(job), job
    assert re.fullmatch(rf"{re.escape(name)}-migrate-[0-9a-f]{{8}}", job), job


def test_migration_job_name_of_the_longest_backend_name_is_62_characters():
    assert len(migration_job_name("x" * MAX_BACKEND_NAME, "k")) == 62
    assert MAX_BACKEND_NAME == 45


def test_migration_job_name_cut_on_a_dot_is_still_valid():
    # Job names are no longer cut; a '.' can no longer reach them because parse refuses it.
    name = "a" * 39 + ".b"
    assert spec_error({}, name=name).field == "metadata.name"
    job = migration_job_name("a" * 39 + "-b", "3.17.2")
    assert job.startswith("a" * 39 + "-b-migrate-")
    assert _DNS1123_SUBDOMAIN.fullmatch(job), job


def test_migration_job_name_changes_with_the_version():
    assert migration_job_name("team-a", "3.17.2") != migration_job_name("team-a", "3.17.3")
    assert migration_job_name("team-a", "3.17.2") == migration_job_name("team-a", "3.17.2")
    assert migration_job_name("team-a", "3.17.2").startswith("team-a-migrate-")
    digest = hashlib.sha256(b"team-a\x003.17.2").hexdigest()[:8]
    assert migration_job_name("team-a", "3.17.2") == f"team-a-migrate-{digest}"


def test_backend_migration_job_follows_version_and_image():
    base = make_spec({"schema": {"mlflowVersion": "3.17.2"}})
    assert base.migration_job == migration_job_name(NAME, "3.17.2 ghcr.io/mlflow/mlflow:v3.17.2")
    other_version = make_spec({"schema": {"mlflowVersion": "3.17.3"}})
    other_image = make_spec({"schema": {"mlflowVersion": "3.17.2", "image": "registry.local/mlflow:pinned"}})
    assert len({base.migration_job, other_version.migration_job, other_image.migration_job}) == 3
    assert make_spec({"schema": {"mlflowVersion": "3.17.2"}}).migration_job == base.migration_job


def test_migration_job_names_of_long_backends_do_not_collide():
    prefix = "x" * 40
    assert migration_job_name(prefix + "-a", "3.17.2") != migration_job_name(prefix + "-b", "3.17.2")
    prefix = "x" * 43
    assert migration_job_name(prefix + "-a", "3.17.2") != migration_job_name(prefix + "-b", "3.17.2")


def test_migration_job_name_keeps_name_and_key_apart():
    # The NUL separator: ("ab", "c") and ("a", "bc") hash different strings.
    assert migration_job_name("ab", "c").removeprefix("ab-migrate-") != \
        migration_job_name("a", "bc").removeprefix("a-migrate-")
