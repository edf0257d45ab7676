"""trackop.tuning: units, validation, automatic tuning, scopes and the connection budget (pure)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trackop.api import connections, tuning
from trackop.api.connections import ConnectionBudget
from trackop.api.tuning import TuningError, TuningSpec

GiB = 1024**3
MB = 1024
GB = 1024 * 1024
F = "spec.postgres.tuning"


def error(tuning_dict: dict) -> TuningError:
    with pytest.raises(TuningError) as info:
        tuning.parse_tuning(tuning_dict)
    return info.value


# --- units -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, kb", [
    ("64kB", 64), ("16MB", 16384), ("1GB", 1048576), ("1TB", 1024**3),
    ("0kB", 0), ("2147483647kB", 2147483647), ("0016MB", 16384),
])
def test_parse_pg_memory(value, kb):
    assert tuning.parse_pg_memory(value, "f") == kb


@pytest.mark.parametrize("value", [
    "16XB", "16mb", "16Mb", "16kb", "16KB", "16gb", "1.5GB", "", "-1MB", "+1MB", "16", "MB",
    "16 MB", " 16MB", "16MB ", "16MiB", "１６MB", "2048GB", "2TB", "2147483648kB", "9" * 5000 + "kB",
])
def test_parse_pg_memory_rejects(value):
    with pytest.raises(TuningError) as info:
        tuning.parse_pg_memory(value, "spec.postgres.tuning.workMem")
    assert info.value.field == "spec.postgres.tuning.workMem"
    assert str(info.value).startswith("spec.postgres.tuning.workMem: ")


@pytest.mark.parametrize("value", [16, None, 1.5, True])
def test_parse_pg_memory_rejects_non_strings(value):
    with pytest.raises(TuningError) as info:
        tuning.parse_pg_memory(value, "x")  # type: ignore[arg-type]
    assert info.value.field == "x"


def test_tuning_error_is_a_value_error_with_field_and_message():
    err = TuningError("spec.postgres.tuning.workMem", "bad")
    assert isinstance(err, ValueError)
    assert (err.field, err.message, str(err)) == ("spec.postgres.tuning.workMem", "bad",
                                                   "spec.postgres.tuning.workMem: bad")


@pytest.mark.parametrize("kb, text", [
    (16384, "16MB"), (1048576, "1GB"), (100, "100kB"), (0, "0kB"), (1536, "1536kB"),
    (1024**3, "1TB"), (3 * 1024**3, "3TB"), (1024 + 1024 * 1024, "1025MB"), (2147483647, "2147483647kB"),
])
def test_format_pg_memory(kb, text):
    assert tuning.format_pg_memory(kb) == text
    if kb <= 2147483647:  # larger values format fine but PostgreSQL would refuse them
        assert tuning.parse_pg_memory(text, "f") == kb  # round trip


def test_format_pg_memory_rejects_negative():
    with pytest.raises(ValueError):
        tuning.format_pg_memory(-1)


@pytest.mark.parametrize("value, n", [
    ("8Gi", 8 * GiB), ("1024", 1024), ("0", 0), ("1Ki", 1024), ("1Mi", 1024**2), ("1Ti", 1024**4),
    ("1Pi", 1024**5), ("1k", 1000), ("1M", 10**6), ("8G", 8 * 10**9), ("1T", 10**12),
    ("1.5Gi", 3 * GiB // 2), ("0.1Ki", 102), ("1.1", 1), (".5Ki", 512), ("1.Ki", 1024), ("+1Mi", 1024**2),
])
def test_parse_quantity(value, n):
    assert tuning.parse_quantity(value, "f") == n


@pytest.mark.parametrize("value", [
    "", "Gi", "8gi", "8GB", "8 Gi", "-1Gi", "1.5.1Gi", "8Xi", "1e9", "500m", "0x10", "８Gi", "9" * 100,
])
def test_parse_quantity_rejects(value):
    with pytest.raises(TuningError) as info:
        tuning.parse_quantity(value, "spec.postgres.tuning.serverMemory")
    assert info.value.field == "spec.postgres.tuning.serverMemory"


def test_parse_quantity_rejects_non_strings():
    with pytest.raises(TuningError):
        tuning.parse_quantity(8, "f")  # type: ignore[arg-type]


# --- parse_tuning ------------------------------------------------------------------------

def test_parse_tuning_defaults():
    expected = TuningSpec(scope="Database", max_connections=None, shared_buffers_kb=None,
                          work_mem_kb=None, maintenance_work_mem_kb=None,
                          effective_cache_size_kb=None, server_memory_bytes=None,
                          pool_size=2, max_overflow=3, expected_clients=0)
    assert tuning.parse_tuning(None) == expected
    assert tuning.parse_tuning({}) == expected
    assert tuning.parse_tuning({"scope": None, "pool": None, "workMem": None}) == expected


def test_parse_tuning_everything():
    spec = tuning.parse_tuning({
        "scope": "Server", "maxConnections": 200, "sharedBuffers": "1GB", "workMem": "8MB",
        "maintenanceWorkMem": "256MB", "effectiveCacheSize": "3GB", "serverMemory": "4Gi",
        "pool": {"size": 5, "maxOverflow": 0}, "expectedClients": 7,
    })
    assert spec == TuningSpec("Server", 200, GB, 8 * MB, 256 * MB, 3 * GB, 4 * GiB, 5, 0, 7)


def test_parse_tuning_accepts_server_memory_as_integer_bytes():
    assert tuning.parse_tuning({"serverMemory": 8 * GiB}).server_memory_bytes == 8 * GiB


@pytest.mark.parametrize("name, parameter_min_ok, below_min", [
    ("workMem", "64kB", "63kB"),
    ("maintenanceWorkMem", "1MB", "1023kB"),
    ("effectiveCacheSize", "8kB", "7kB"),
])
def test_memory_minimums(name, parameter_min_ok, below_min):
    assert tuning.parse_tuning({name: parameter_min_ok}) is not None
    assert error({name: below_min}).field == f"{F}.{name}"


def test_shared_buffers_minimum_and_scope():
    assert tuning.parse_tuning({"scope": "Server", "sharedBuffers": "128kB"}).shared_buffers_kb == 128
    assert error({"scope": "Server", "sharedBuffers": "120kB"}).field == f"{F}.sharedBuffers"
    err = error({"sharedBuffers": "1GB"})
    assert err.field == f"{F}.sharedBuffers"
    assert "needs scope Server: shared_buffers is server-wide and needs a restart" in str(err)
    assert error({"scope": "Database", "sharedBuffers": "1GB"}).field == f"{F}.sharedBuffers"


def test_memory_maximum_is_postgres_int_range():
    assert tuning.parse_tuning({"workMem": "2147483647kB"}).work_mem_kb == 2147483647
    assert error({"workMem": "2147483648kB"}).field == f"{F}.workMem"
    assert error({"maintenanceWorkMem": "2TB"}).field == f"{F}.maintenanceWorkMem"


@pytest.mark.parametrize("tuning_dict, field", [
    ({"scope": "Cluster"}, "scope"),
    ({"scope": "server"}, "scope"),
    ({"maxConnections": 0}, "maxConnections"),
    ({"maxConnections": 262144}, "maxConnections"),
    ({"maxConnections": "100"}, "maxConnections"),
    ({"maxConnections": True}, "maxConnections"),
    ({"maxConnections": 10.0}, "maxConnections"),
    ({"workMem": "16mb"}, "workMem"),
    ({"workMem": "16"}, "workMem"),
    ({"workMem": 16}, "workMem"),
    ({"maintenanceWorkMem": "1.5GB"}, "maintenanceWorkMem"),
    ({"effectiveCacheSize": "16XB"}, "effectiveCacheSize"),
    ({"serverMemory": "lots"}, "serverMemory"),
    ({"serverMemory": "0"}, "serverMemory"),
    ({"serverMemory": True}, "serverMemory"),
    ({"scope": "Server", "sharedBuffers": "8GB", "serverMemory": "8Gi"}, "sharedBuffers"),
    ({"pool": 3}, "pool"),
    ({"pool": {"size": 0}}, "pool.size"),
    ({"pool": {"size": 101}}, "pool.size"),
    ({"pool": {"size": "2"}}, "pool.size"),
    ({"pool": {"maxOverflow": -1}}, "pool.maxOverflow"),
    ({"pool": {"maxOverflow": 101}}, "pool.maxOverflow"),
    ({"expectedClients": -1}, "expectedClients"),
    ({"expectedClients": 100001}, "expectedClients"),
])
def test_parse_tuning_errors_name_the_field(tuning_dict, field):
    err = error(tuning_dict)
    assert err.field == f"{F}.{field}"
    assert str(err).startswith(f"{F}.{field}: ")


def test_parse_tuning_rejects_a_non_mapping():
    with pytest.raises(TuningError) as info:
        tuning.parse_tuning(["workMem"])  # type: ignore[arg-type]
    assert info.value.field == F


@pytest.mark.parametrize("tuning_dict", [
    {"maxConnections": 1}, {"maxConnections": 262143}, {"pool": {"size": 1, "maxOverflow": 0}},
    {"pool": {"size": 100, "maxOverflow": 100}}, {"expectedClients": 0}, {"expectedClients": 100000},
])
def test_parse_tuning_range_edges_are_accepted(tuning_dict):
    tuning.parse_tuning(tuning_dict)


# --- auto_tune ---------------------------------------------------------------------------

def test_auto_tune_nothing_to_go_on():
    assert tuning.auto_tune(tuning.parse_tuning(None)) == {}
    assert tuning.auto_tune(tuning.parse_tuning({"scope": "Server"})) == {}


def test_auto_tune_8gi_server():
    spec = tuning.parse_tuning({"scope": "Server", "serverMemory": "8Gi"})
    # work_mem: (8GiB - 2GiB) / (3 * 100) = 20971kB, rounded down to 20MB.
    assert (8 * GB - 2 * GB) // 300 == 20971
    assert tuning.auto_tune(spec) == {
        "shared_buffers": 2 * GB, "effective_cache_size": 6 * GB,
        "maintenance_work_mem": 512 * MB, "work_mem": 20 * MB,
    }
    assert tuning.settings_for_scope(spec) == {
        "shared_buffers": "2GB", "effective_cache_size": "6GB",
        "maintenance_work_mem": "512MB", "work_mem": "20MB",
    }


def test_auto_tune_8gi_database_scope_sets_no_shared_buffers_but_assumes_them():
    spec = tuning.parse_tuning({"serverMemory": "8Gi"})
    assert tuning.auto_tune(spec) == {
        "effective_cache_size": 6 * GB, "maintenance_work_mem": 512 * MB, "work_mem": 20 * MB,
    }


def test_auto_tune_work_mem_uses_max_connections():
    spec = tuning.parse_tuning({"scope": "Server", "serverMemory": "8Gi", "maxConnections": 50})
    # (8GiB - 2GiB) / 150 = 41943kB -> 40MB.
    assert tuning.auto_tune(spec)["work_mem"] == 40 * MB
    assert tuning.auto_tune(spec)["max_connections"] == 50


def test_auto_tune_work_mem_floor_and_small_values():
    spec = tuning.parse_tuning({"scope": "Server", "serverMemory": "64Mi", "maxConnections": 1000})
    tuned = tuning.auto_tune(spec)
    assert tuned["work_mem"] == 64  # 48MiB / 3000 = 16kB, floored at 64kB
    assert tuned["shared_buffers"] == 16 * MB
    assert tuned["effective_cache_size"] == 48 * MB
    assert tuned["maintenance_work_mem"] == 4 * MB
    spec = tuning.parse_tuning({"serverMemory": "512Mi", "maxConnections": 200})
    # (512MiB - 128MiB) / 600 = 655kB: below 1MB, so rounded down to whole 8kB pages.
    assert tuning.auto_tune(spec)["work_mem"] == 648


def test_auto_tune_maintenance_work_mem_capped_at_2gb():
    spec = tuning.parse_tuning({"serverMemory": "64Gi"})
    assert tuning.auto_tune(spec)["maintenance_work_mem"] == 2 * GB
    assert tuning.auto_tune(tuning.parse_tuning({"serverMemory": "32Gi"}))["maintenance_work_mem"] == 2 * GB
    assert tuning.auto_tune(tuning.parse_tuning({"serverMemory": "16Gi"}))["maintenance_work_mem"] == GB


def test_auto_tune_rounds_odd_memory_to_whole_mb():
    spec = tuning.parse_tuning({"scope": "Server", "serverMemory": "8G"})  # 7812500kB
    tuned = tuning.auto_tune(spec)
    assert tuned["shared_buffers"] == 1907 * MB  # 1953125kB
    assert tuned["effective_cache_size"] == 5722 * MB  # 5859375kB
    assert all(v % MB == 0 for v in tuned.values())


def test_auto_tune_tiny_memory_stays_within_postgres_minimums():
    tuned = tuning.auto_tune(tuning.parse_tuning({"scope": "Server", "serverMemory": "1"}))
    assert tuned == {"shared_buffers": 128, "effective_cache_size": 8,
                     "maintenance_work_mem": MB, "work_mem": 64}


def test_auto_tune_huge_memory_stays_within_int_range():
    tuned = tuning.auto_tune(tuning.parse_tuning({"scope": "Server", "serverMemory": "8Ti"}))
    assert tuned["shared_buffers"] <= 2147483647 and tuned["shared_buffers"] % MB == 0
    assert tuned["effective_cache_size"] <= 2147483647
    assert tuning.settings_for_scope(tuning.parse_tuning({"scope": "Server", "serverMemory": "8Ti"}))


def test_explicit_values_win():
    spec = tuning.parse_tuning({
        "scope": "Server", "serverMemory": "8Gi", "sharedBuffers": "1GB", "workMem": "4MB",
        "maintenanceWorkMem": "100MB", "effectiveCacheSize": "5GB", "maxConnections": 300,
    })
    assert tuning.auto_tune(spec) == {
        "shared_buffers": GB, "work_mem": 4 * MB, "maintenance_work_mem": 100 * MB,
        "effective_cache_size": 5 * GB, "max_connections": 300,
    }


def test_explicit_shared_buffers_feed_the_work_mem_formula():
    spec = tuning.parse_tuning({"scope": "Server", "serverMemory": "8Gi", "sharedBuffers": "5GB"})
    assert tuning.auto_tune(spec)["work_mem"] == 10 * MB  # 3GiB / 300 = 10485kB -> 10MB


def test_explicit_values_without_server_memory():
    spec = tuning.parse_tuning({"workMem": "64kB", "maxConnections": 20})
    assert tuning.auto_tune(spec) == {"work_mem": 64, "max_connections": 20}


# --- scopes ------------------------------------------------------------------------------

def test_settings_for_database_scope_are_only_per_session():
    spec = tuning.parse_tuning({"serverMemory": "8Gi", "maxConnections": 40})
    settings = tuning.settings_for_scope(spec)
    assert set(settings) == {"work_mem", "maintenance_work_mem", "effective_cache_size"}
    assert settings["maintenance_work_mem"] == "512MB"
    assert tuning.connection_limit(spec) == 40


def test_settings_for_server_scope_include_max_connections_as_text():
    spec = tuning.parse_tuning({"scope": "Server", "maxConnections": 250, "workMem": "100kB"})
    assert tuning.settings_for_scope(spec) == {"max_connections": "250", "work_mem": "100kB"}
    assert tuning.connection_limit(spec) == -1


def test_settings_for_scope_empty():
    assert tuning.settings_for_scope(tuning.parse_tuning(None)) == {}


def test_connection_limit_defaults_to_none():
    assert tuning.connection_limit(tuning.parse_tuning(None)) == -1
    assert tuning.connection_limit(tuning.parse_tuning({"scope": "Server"})) == -1


# --- connection budget -------------------------------------------------------------------

def test_constants():
    assert connections.MIGRATION_CONNECTIONS == 2
    assert connections.OPERATOR_RESERVE == 2


def test_required_connections_breakdown():
    spec = tuning.parse_tuning({"pool": {"size": 2, "maxOverflow": 3}, "expectedClients": 4})
    # server: 2 replicas * 3 workers * 2 engines (tracking + registry) * (2 + 3)
    assert connections.required_connections(spec, 2, 3) == {
        "server": 60, "clients": 20, "migration": 2, "reserve": 2}


def test_required_connections_defaults_and_zero_replicas():
    spec = tuning.parse_tuning(None)
    assert connections.required_connections(spec, 0, 4) == {
        "server": 0, "clients": 0, "migration": 2, "reserve": 2}
    assert connections.required_connections(spec, 1, 1)["server"] == 10


def test_max_overflow_zero_counts_as_sqlalchemy_default():
    # MLflow passes max_overflow only when non-zero, so 0 leaves SQLAlchemy's 10.
    spec = tuning.parse_tuning({"pool": {"size": 1, "maxOverflow": 0}, "expectedClients": 1})
    assert connections.required_connections(spec, 1, 1) == {
        "server": 22, "clients": 11, "migration": 2, "reserve": 2}


def budget(spec=None, replicas=1, workers=1, **kw) -> ConnectionBudget:
    args = dict(database_limit=-1, role_limit=-1, server_max_connections=100,
                reserved_slots=3, used_by_others=0)
    args.update(kw)
    return connections.connection_budget(spec or tuning.parse_tuning(None), replicas, workers, **args)


def test_budget_server_term_only_when_limits_are_minus_one():
    b = budget(used_by_others=7)
    assert b.limit == 100 - 3  # what status shows: not moving with other sessions
    assert b.available == 100 - 3 - 7
    assert b.required == 10 + 0 + 2 + 2
    assert b.breakdown == {"server": 10, "clients": 0, "migration": 2, "reserve": 2}
    assert b.within


@pytest.mark.parametrize("database_limit, role_limit, expected", [
    (20, -1, 20), (-1, 15, 15), (20, 15, 15), (15, 20, 15), (500, 500, 97), (0, -1, 0),
])
def test_budget_smallest_limit_wins(database_limit, role_limit, expected):
    assert budget(database_limit=database_limit, role_limit=role_limit).limit == expected


def test_budget_exceeded_and_exact():
    assert budget(database_limit=13).within is False  # 14 required
    assert budget(database_limit=14).within is True
    b = budget(replicas=3, workers=4, used_by_others=90)  # 120 + 4 against 7
    assert (b.required, b.limit, b.available, b.within) == (124, 97, 7, False)


def test_budget_unknown_limit():
    b = budget(server_max_connections=None)
    assert b.limit is None and b.within
    assert budget(server_max_connections=None, role_limit=5).limit == 5
    assert ConnectionBudget(required=10**6, limit=None, breakdown={}).within


def test_budget_can_be_negative_when_others_use_everything():
    b = budget(used_by_others=200)
    assert b.limit == 97 and b.available == -103 and not b.within


# --- pool env ----------------------------------------------------------------------------

def test_pool_env():
    spec = tuning.parse_tuning({"pool": {"size": 7, "maxOverflow": 0}})
    assert tuning.pool_env(spec) == {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "7",
                                     "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "0"}
    assert tuning.pool_env(tuning.parse_tuning(None)) == {
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "3"}


def test_pool_env_names_are_the_ones_mlflow_reads():
    mlflow_env = pytest.importorskip("mlflow.environment_variables")
    assert mlflow_env.MLFLOW_SQLALCHEMYSTORE_POOL_SIZE.name == tuning.POOL_SIZE_ENV
    assert mlflow_env.MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW.name == tuning.MAX_OVERFLOW_ENV
    utils = Path(pytest.importorskip("mlflow.store.db.utils").__file__).read_text()
    assert "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE.get()" in utils
    assert "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW.get()" in utils
    # The reason maxOverflow 0 is budgeted as 10: MLflow only forwards a truthy value.
    assert re.search(r"if pool_max_overflow:\s*\n\s*kwargs\[\"max_overflow\"\]", utils)


def test_module_docstrings_document_the_formulas():
    doc = (tuning.__doc__ or "") + (connections.__doc__ or "")
    for text in ("RAM / 4", "RAM * 3 / 4", "min(RAM / 16, 2GB)",
                 "(RAM - shared_buffers) / (3 * max_connections)", "replicas * workers",
                 "expectedClients * per_process", "64kB", "262143"):
        assert text in doc, text
