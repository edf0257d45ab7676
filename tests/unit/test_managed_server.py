"""spec.postgres.managed: parsing, the pure builders of specs.managed_server and the verdicts of
specs.managed_server_status (no cluster)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_mutations import json_values

from trackop.api import parsing
from trackop.api.v1alpha1 import ENGINE_STATEFULSET, ENGINES, BackendSpec, ManagedServer, PostgresEndpoint, SpecError
from trackop.specs import managed_server, managed_server_status

OWNER = {"apiVersion": "trackop.dev/v1alpha1", "kind": "TrackingBackend",
         "metadata": {"name": "team-a", "namespace": "ml", "uid": "u-1"}}


def parse(managed_spec: dict | None = None, name: str = "team-a", **extra) -> BackendSpec:
    postgres = {"managed": managed_spec if managed_spec is not None else {}, **extra.pop("postgres", {})}
    return parsing.parse("ml", name, {"postgres": postgres, **extra})


# ---- parsing ---------------------------------------------------------------------------------

def test_defaults_are_a_single_statefulset_reached_through_its_service():
    spec = parse()
    assert spec.managed == ManagedServer(
        engine="StatefulSet", name="team-a-postgres", version="17", image="docker.io/library/postgres:17",
        port=5432, instances=1, storage_size="10Gi", storage_class=None, resources=None)
    assert spec.postgres == PostgresEndpoint("team-a-postgres.ml.svc", 5432, "disable", "team-a-postgres", 5)


def test_cloudnativepg_is_reached_through_its_rw_service_with_its_superuser_secret():
    spec = parse({"engine": "CloudNativePG", "instances": 3, "version": "16"})
    assert spec.managed.image == "ghcr.io/cloudnative-pg/postgresql:16"
    assert spec.postgres.host == "team-a-postgres-rw.ml.svc"
    assert spec.postgres.admin_secret == "team-a-postgres-superuser"
    assert spec.postgres.ssl_mode == "require"


@pytest.mark.parametrize("spec, field", [
    ({"postgres": {"managed": {}, "external": {"host": "h", "adminSecretRef": {"name": "a"}}}}, "spec.postgres"),
    ({"postgres": {}}, "spec.postgres.external"),
    ({"postgres": {"managed": {"engine": "Patroni"}}}, "spec.postgres.managed.engine"),
    ({"postgres": {"managed": {"instances": 3}}}, "spec.postgres.managed.instances"),
    ({"postgres": {"managed": {"engine": "CloudNativePG", "port": 6432}}}, "spec.postgres.managed.port"),
    ({"postgres": {"managed": {"version": "9.6"}}}, "spec.postgres.managed.version"),
    ({"postgres": {"managed": {"version": "12"}}}, "spec.postgres.managed.version"),
    ({"postgres": {"managed": {"storage": {"size": "lots"}}}}, "spec.postgres.managed.storage.size"),
    ({"postgres": {"managed": {"port": 80}}}, "spec.postgres.managed.port"),
    ({"postgres": {"managed": [], }}, "spec.postgres.managed"),
    ({"postgres": {"managed": {}, "tuning": {"scope": "Server", "maxConnections": 3}}},
     "spec.postgres.tuning.maxConnections"),
])
def test_invalid_managed_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as raised:
        parsing.parse("ml", "team-a", spec)
    assert raised.value.field == field


def test_a_managed_backend_name_leaves_room_for_the_statefulset_revision_label():
    parse(name="a" * 43)
    with pytest.raises(SpecError) as raised:
        parse(name="a" * 44)
    assert raised.value.field == "metadata.name"


# ---- parameters and the budget check --------------------------------------------------------

def test_scope_server_tuning_becomes_startup_parameters_and_scope_database_does_not():
    server = parse(postgres={"tuning": {"scope": "Server", "maxConnections": 50, "sharedBuffers": "256MB",
                                        "workMem": "8MB"}})
    assert managed_server.parameters(server) == {"max_connections": "50", "shared_buffers": "256MB", "work_mem": "8MB"}
    database = parse(postgres={"tuning": {"scope": "Database", "workMem": "8MB"}})
    assert managed_server.parameters(database) == {}
    assert managed_server.parameters(parse()) == {}


def test_lowering_max_connections_below_what_the_backend_needs_is_refused_before_a_restart():
    spec = parse(postgres={"tuning": {"scope": "Server", "maxConnections": 10}},
                 server={"replicas": 2, "workers": 2})
    shortfall = managed_server_status.budget_shortfall(spec, managed_server.parameters(spec))
    # server 2 replicas * 2 workers * 2 engines * (pool 2 + overflow 3) = 40, + migration 2 + reserve 2
    assert shortfall is not None and shortfall.required == 44 and shortfall.usable == 7
    assert "max_connections 10 leaves 7" in shortfall.message and "needs 44" in shortfall.message
    enough = parse(postgres={"tuning": {"scope": "Server", "maxConnections": 47}}, server={"replicas": 2, "workers": 2})
    assert managed_server_status.budget_shortfall(enough, managed_server.parameters(enough)) is None
    # No max_connections: PostgreSQL's own default stays.
    assert managed_server_status.budget_shortfall(spec, {}) is None


# ---- builders ----------------------------------------------------------------------------------

def test_statefulset_runs_the_official_image_with_its_parameters_restricted_and_probed():
    spec = parse({"port": 6543, "storage": {"size": "5Gi", "storageClassName": "fast"}},
                 postgres={"tuning": {"scope": "Server", "maxConnections": 80, "workMem": "4MB"}})
    body = managed_server.statefulset(spec, OWNER, managed_server.parameters(spec))
    assert body["metadata"]["name"] == "team-a-postgres"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["spec"]["replicas"] == 1 and body["spec"]["serviceName"] == "team-a-postgres"
    pod = body["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "docker.io/library/postgres:17"
    assert container["command"] == ["docker-entrypoint.sh"]
    assert container["args"] == ["postgres", "-c", "port=6543", "-c", "unix_socket_directories=/var/run/postgresql",
                                 "-c", "max_connections=80", "-c", "work_mem=4MB"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "team-a-postgres", "key": "password"}
    assert env["PGDATA"]["value"].startswith(managed_server.DATA_MOUNT + "/")
    assert container["ports"] == [{"name": "postgres", "containerPort": 6543, "protocol": "TCP"}]
    assert "6543" in container["readinessProbe"]["exec"]["command"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 999
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {managed_server.DATA_MOUNT, managed_server.SOCKET_DIR, "/tmp"} == mounts
    (claim,) = body["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi" and claim["spec"]["storageClassName"] == "fast"
    assert body["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert body["spec"]["selector"]["matchLabels"] == body["spec"]["template"]["metadata"]["labels"]


def test_deletion_policy_delete_lets_the_claim_go_with_the_statefulset():
    spec = parse(deletionPolicy="Delete")
    body = managed_server.statefulset(spec, OWNER, {})
    assert body["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_resources_default_and_override():
    assert managed_server.statefulset(parse(), OWNER, {})["spec"]["template"]["spec"]["containers"][0]["resources"] == \
        managed_server.DEFAULT_RESOURCES
    given = {"limits": {"memory": "2Gi"}}
    spec = parse({"resources": given})
    container = managed_server.statefulset(spec, OWNER, {})["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == given


def test_service_selects_the_pod_on_the_server_port():
    spec = parse({"port": 6543})
    body = managed_server.service(spec, OWNER)
    assert body["spec"]["selector"] == managed_server.pod_labels(spec)
    assert body["spec"]["ports"] == [{"name": "postgres", "port": 6543, "targetPort": "postgres", "protocol": "TCP"}]


def test_superuser_secret_is_basic_auth_owned_by_the_backend():
    body = managed_server.superuser_secret(parse(), "pw", OWNER)
    assert body["type"] == "kubernetes.io/basic-auth"
    assert body["stringData"] == {"username": "postgres", "password": "pw"}
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_cnpg_cluster_carries_instances_storage_and_the_tuning_as_parameters():
    spec = parse({"engine": "CloudNativePG", "instances": 3, "storage": {"size": "20Gi", "storageClassName": "ssd"}},
                 postgres={"tuning": {"scope": "Server", "maxConnections": 200, "sharedBuffers": "1GB"}})
    body = managed_server.cnpg_cluster(spec, OWNER, managed_server.parameters(spec))
    assert body["apiVersion"] == "postgresql.cnpg.io/v1" and body["kind"] == "Cluster"
    assert body["metadata"]["name"] == "team-a-postgres"
    assert body["spec"]["instances"] == 3
    assert body["spec"]["enableSuperuserAccess"] is True
    assert body["spec"]["storage"] == {"size": "20Gi", "storageClass": "ssd"}
    assert body["spec"]["postgresql"]["parameters"] == {"max_connections": "200", "shared_buffers": "1GB"}
    assert "resources" not in body["spec"]
    assert "ownerReferences" not in managed_server.cnpg_cluster(spec, None, {})["metadata"]


def test_parameters_are_read_back_from_the_args():
    spec = parse(postgres={"tuning": {"scope": "Server", "maxConnections": 80}})
    body = managed_server.statefulset(spec, OWNER, managed_server.parameters(spec))
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert managed_server.parameters_from_args(args) == {
        "port": "5432", "unix_socket_directories": "/var/run/postgresql", "max_connections": "80"}
    assert managed_server.parameters_from_args(None) == {}


# ---- readiness verdicts --------------------------------------------------------------------------

def _sts(status: dict, generation: int = 1, args: list[str] | None = None) -> dict:
    return {"metadata": {"generation": generation}, "status": status,
            "spec": {"template": {"spec": {"containers": [{"args": args or []}]}}}}


def test_statefulset_progress():
    spec = parse()
    assert managed_server_status.statefulset_progress(spec, _sts({})).reason == "Starting"
    rolling = _sts({"observedGeneration": 2, "currentRevision": "a", "updateRevision": "b", "readyReplicas": 0},
                   generation=2, args=["postgres", "-c", "port=5432", "-c", "max_connections=50"])
    progress = managed_server_status.statefulset_progress(spec, rolling)
    assert (progress.ready, progress.reason) == (False, "Restarting")
    assert "max_connections=50" in progress.message and "port=" not in progress.message
    stale = _sts({"observedGeneration": 1, "currentRevision": "a", "updateRevision": "a", "readyReplicas": 1,
                  "updatedReplicas": 1}, generation=2)
    assert not managed_server_status.statefulset_progress(spec, stale).ready
    ready = _sts({"observedGeneration": 2, "currentRevision": "b", "updateRevision": "b", "readyReplicas": 1,
                  "updatedReplicas": 1}, generation=2)
    progress = managed_server_status.statefulset_progress(spec, ready)
    assert (progress.ready, progress.reason) == (True, "Running")
    assert "team-a-postgres.ml.svc:5432" in progress.message


def test_cluster_progress_follows_cloudnativepg_ready_condition():
    spec = parse({"engine": "CloudNativePG", "instances": 2})
    progress = managed_server_status.cluster_progress(spec, {})
    assert (progress.ready, progress.reason) == (False, "Starting")
    assert "not yet reconciled" in progress.message
    progress = managed_server_status.cluster_progress(spec, {"status": {"phase": "Setting up primary",
                                                                        "readyInstances": 0}})
    assert "Setting up primary" in progress.message
    ready = {"status": {"readyInstances": 2, "conditions": [{"type": "Ready", "status": "True"}]}}
    assert managed_server_status.cluster_progress(spec, ready).ready


# ---- property: any value at any managed field is parsed or refused naming the field ---------

MANAGED_FIELDS = ("engine", "version", "image", "port", "instances", "storage", "storage.size",
                  "storage.storageClassName", "resources")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(MANAGED_FIELDS), json_values), min_size=1, max_size=3),
       engine=st.sampled_from(ENGINES))
def test_any_managed_value_parses_or_is_refused_naming_the_field(edits, engine):
    managed_spec: dict = {"engine": engine}
    for path, value in edits:
        node = managed_spec
        *parents, last = path.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = value
    try:
        parsed = parse(managed_spec)
    except SpecError as error:
        assert error.field.startswith("spec.postgres"), error.field
        assert str(error).startswith(f"{error.field}: ")
    else:
        assert parsed.managed is not None and parsed.postgres.host.endswith(".ml.svc")
        managed_server.statefulset(parsed, OWNER, {}) if parsed.managed.engine == ENGINE_STATEFULSET \
            else managed_server.cnpg_cluster(parsed, OWNER, {})
