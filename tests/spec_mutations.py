"""Hypothesis strategies for bad TrackingBackend input: a valid spec, mutated at random paths.

A ``Mutation`` is one edit of a spec (set a value, drop a field, add an unknown field, or a
conflict between fields) plus the field paths an error about it may name: the edited path,
its ancestors (a CEL rule on the enclosing object) and its descendants (a required field
inside an object that was dropped). Shared by the unit test of ``api.parse`` and the
end-to-end test through the API server, the webhook and the operator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

# Paths are dotted, starting at the object ("spec.postgres.external.port").
INT_RANGES = {
    "spec.postgres.external.port": (1, 65535),
    "spec.postgres.external.connectTimeoutSeconds": (1, 60),
    "spec.postgres.tuning.maxConnections": (1, 262143),
    "spec.postgres.tuning.pool.size": (1, 100),
    "spec.postgres.tuning.pool.maxOverflow": (0, 100),
    "spec.postgres.tuning.expectedClients": (0, 100000),
    "spec.server.replicas": (0, 50),
    "spec.server.workers": (1, 32),
    "spec.server.port": (1024, 65535),
}
ENUMS = {
    "spec.postgres.external.sslMode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "spec.postgres.driver": ("psycopg", "psycopg2"),
    "spec.postgres.tuning.scope": ("Database", "Server"),
    "spec.schema.migration": ("Inline", "Job"),
    "spec.deletionPolicy": ("Retain", "Delete"),
    "spec.injection.mode": ("Server", "Direct"),
}
STRINGS = (
    "spec.postgres.external.host",
    "spec.postgres.external.adminSecretRef.name",
    "spec.postgres.database",
    "spec.postgres.role",
    "spec.postgres.passwordSecretRef.name",
    "spec.postgres.passwordSecretRef.key",
    "spec.postgres.tuning.workMem",
    "spec.postgres.tuning.maintenanceWorkMem",
    "spec.postgres.tuning.effectiveCacheSize",
    "spec.postgres.tuning.sharedBuffers",
    "spec.postgres.tuning.serverMemory",
    "spec.schema.mlflowVersion",
    "spec.schema.image",
    "spec.artifacts.s3.bucket",
    "spec.artifacts.s3.prefix",
    "spec.artifacts.s3.endpoint",
    "spec.artifacts.s3.region",
    "spec.server.image",
    "spec.server.serviceAccountName",
)
BOOLEANS = ("spec.server.enabled", "spec.server.serveArtifacts", "spec.server.jobExecution", "spec.artifacts.s3.createBucket")
OBJECTS = (
    "spec.postgres", "spec.postgres.external", "spec.postgres.external.adminSecretRef", "spec.postgres.tuning",
    "spec.postgres.tuning.pool", "spec.schema", "spec.artifacts", "spec.artifacts.s3", "spec.server",
    "spec.injection", "spec.injection.namespaceSelector", "spec.server.resources",
)
ARRAYS = ("spec.server.allowedHosts",)
# Required fields: dropping one must be refused (naming it or its object).
DROPPABLE = (
    "spec.postgres", "spec.postgres.external", "spec.postgres.external.host",
    "spec.postgres.external.adminSecretRef", "spec.postgres.external.adminSecretRef.name",
    "spec.artifacts.s3.bucket", "spec.postgres.external.port", "spec.postgres.external.sslMode",
)
MEMORY = ("spec.postgres.tuning.workMem", "spec.postgres.tuning.maintenanceWorkMem",
          "spec.postgres.tuning.effectiveCacheSize", "spec.postgres.tuning.sharedBuffers")

_MISSING = object()


@dataclass
class Mutation:
    """One edit of a spec; ``fields`` are the paths an error about it may name."""

    kind: str
    path: str
    value: Any = None
    fields: tuple[str, ...] = ()
    apply_fn: Callable[[dict], None] | None = field(default=None, repr=False)

    def apply(self, obj: dict) -> None:
        if self.apply_fn is not None:
            self.apply_fn(obj)
        elif self.kind == "drop":
            drop(obj, self.path)
        else:
            put(obj, self.path, copy.deepcopy(self.value))

    def __repr__(self) -> str:  # hypothesis prints falsifying examples: keep huge values short
        value = repr(self.value)
        if len(value) > 120:
            value = value[:100] + f"...<{len(value)} chars>"
        return f"Mutation({self.kind}, {self.path}, {value})"

    def names(self, text: str) -> bool:
        """Whether ``text`` names the edited field: the path, an ancestor below spec, or a
        descendant, or one of the extra fields of a conflict."""
        return any(candidate in text for candidate in self.candidates())

    def candidates(self) -> list[str]:
        parts = self.path.split(".")
        ancestors = [".".join(parts[:i]) for i in range(len(parts), 1, -1)]
        if self.path == "metadata.name":
            ancestors = ["metadata.name"]
        return [*ancestors, *self.fields]

    def related(self, error_field: str) -> bool:
        """Whether a field an error names is the edited path, an ancestor or a descendant."""
        if error_field in self.fields:
            return True
        # A sibling too: setting a field inside an object the base lacks creates the object,
        # whose required fields are then missing.
        return (error_field == self.path or self.path.startswith(error_field + ".")
                or error_field.startswith(self.path + ".")
                or error_field.rpartition(".")[0] == self.path.rpartition(".")[0])


def put(obj: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = obj
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def drop(obj: dict, path: str) -> None:
    parts = path.split(".")
    node = obj
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


# ---- values ------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(min_size=1, max_size=8), children, max_size=3)),
    max_leaves=6,
)
unicode_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
huge_text = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "é", "9", "-", "\U0001f600"]),
                      st.sampled_from([64, 254, 300, 1025, 5000, 70000]))
bad_names = st.one_of(
    st.sampled_from(["Team-A", "team_a", "1team", "team-", "a" * 46, "team.a", "tëam", "x" * 63]),
    st.from_regex(r"[a-z][-a-z0-9]{45,60}", fullmatch=True),
)
name_suffix = st.from_regex(r"[a-z0-9]{6}", fullmatch=True)


def _wrong_type_for(path: str) -> st.SearchStrategy:
    if path in INT_RANGES:
        return json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, int))
    if path in BOOLEANS:
        return json_values.filter(lambda v: not isinstance(v, bool) and v is not None)
    if path in OBJECTS:
        return json_values.filter(lambda v: not isinstance(v, dict) and v is not None)
    if path in ARRAYS:
        return json_values.filter(lambda v: not isinstance(v, list) and v is not None)
    return json_values.filter(lambda v: not isinstance(v, str) and v is not None)


def _set(kind: str, path: str, values: st.SearchStrategy, *fields: str) -> st.SearchStrategy:
    return values.map(lambda v: Mutation(kind, path, v, fields))


def wrong_types() -> st.SearchStrategy:
    paths = [*INT_RANGES, *ENUMS, *STRINGS, *BOOLEANS, *OBJECTS, *ARRAYS]
    return st.sampled_from(paths).flatmap(lambda p: _set("wrong-type", p, _wrong_type_for(p)))


def out_of_range() -> st.SearchStrategy:
    def values(path: str) -> st.SearchStrategy:
        low, high = INT_RANGES[path]
        return st.one_of(st.integers(-2**40, low - 1), st.integers(high + 1, 2**40),
                         st.sampled_from([low - 1, high + 1, -1, 2**31, 2**63 - 1]))
    return st.sampled_from(list(INT_RANGES)).flatmap(lambda p: _set("out-of-range", p, values(p)))


def bad_enums() -> st.SearchStrategy:
    def values(path: str) -> st.SearchStrategy:
        good = ENUMS[path]
        return st.one_of(st.sampled_from([g.lower() for g in good] + [g.upper() for g in good] + ["", " ", "Other"]),
                         unicode_text).filter(lambda v: v not in good)
    return st.sampled_from(list(ENUMS)).flatmap(lambda p: _set("bad-enum", p, values(p)))


def bad_strings() -> st.SearchStrategy:
    """Unicode, huge, empty, negative sizes and near misses for the string fields."""
    values = st.one_of(
        unicode_text, huge_text,
        st.sampled_from(["", " ", "-1MB", "-5", "0kB", "1PB", "1 GB", "1.5GB", "8gb", "NaN", "0", "-1Gi",
                         "127.0.0.1:5432", "postgres", "template1", "pg_admin", "public",
                         "current_user", "none", ":::", "fe80::1%eth0", "mlflow_ok", "3.17", "v3.17.2",
                         "http://", "ftp://x", "a b", "A", "x;DROP ROLE postgres", "'--", "\x00", "\u202e"]),
    )
    return st.sampled_from(list(STRINGS)).flatmap(lambda p: _set("bad-string", p, values))


def negative_sizes() -> st.SearchStrategy:
    values = st.builds(lambda n, unit: f"-{n}{unit}", st.integers(0, 10**6), st.sampled_from(["kB", "MB", "GB", "TB"]))
    return st.one_of(
        st.sampled_from(list(MEMORY)).flatmap(lambda p: _set("negative-size", p, values)),
        _set("negative-size", "spec.postgres.tuning.serverMemory",
             st.sampled_from(["-8Gi", "-1", "-0.5Gi", "0", "0Gi"])),
    )


def unknown_fields() -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(["extra", "Port", "hostname", "unknown", "sslmode"]),
                     st.from_regex(r"[a-zA-Z][a-zA-Z0-9]{0,10}", fullmatch=True))
    return st.builds(
        lambda parent, key, value: Mutation("unknown-field", f"{parent}.{key}", value),
        st.sampled_from(["spec", *[p for p in OBJECTS if p != "spec.injection.namespaceSelector"]]),
        keys, json_values)


def dropped_fields() -> st.SearchStrategy:
    return st.sampled_from(DROPPABLE).map(lambda p: Mutation("drop", p))


def bad_metadata_names() -> st.SearchStrategy:
    return bad_names.map(lambda n: Mutation("bad-name", "metadata.name", n))


def _two_stores(second: str) -> Mutation:
    stores = {"gcs": {"bucket": "second-bucket"}, "azure": {"container": "second", "storageAccount": "acct1"}}

    def apply(obj: dict) -> None:
        artifacts = obj["spec"].setdefault("artifacts", {})
        if not isinstance(artifacts, dict) or not any(artifacts.get(k) for k in ("s3", "gcs", "azure")):
            obj["spec"]["artifacts"] = {"s3": {"bucket": "first-bucket"}}
        obj["spec"]["artifacts"][second] = stores[second]
    return Mutation("conflict", "spec.artifacts", second, apply_fn=apply)


def _shared_buffers_on_database_scope(value: str) -> Mutation:
    def apply(obj: dict) -> None:
        put(obj, "spec.postgres.tuning.scope", "Database")
        put(obj, "spec.postgres.tuning.sharedBuffers", value)
    return Mutation("conflict", "spec.postgres.tuning.sharedBuffers", value,
                    ("spec.postgres.tuning", "spec.postgres.tuning.scope"), apply_fn=apply)


def _server_mode_without_server(disabled: bool) -> Mutation:
    def apply(obj: dict) -> None:
        put(obj, "spec.injection.mode", "Server")
        if disabled:
            put(obj, "spec.server.enabled", False)
        else:
            obj["spec"].pop("server", None)
    return Mutation("conflict", "spec.injection.mode", "server disabled" if disabled else "no server",
                    ("spec.server",), apply_fn=apply)


def _password_ref_without_name() -> Mutation:
    return Mutation("conflict", "spec.postgres.passwordSecretRef", {"key": "password"},
                    apply_fn=lambda obj: put(obj, "spec.postgres.passwordSecretRef", {"key": "password"}))


def _bad_selector(operator: str, values: Any) -> Mutation:
    expression = {"key": "team", "operator": operator, **({"values": values} if values is not _MISSING else {})}
    return Mutation("conflict", "spec.injection.namespaceSelector", expression,
                    apply_fn=lambda obj: put(obj, "spec.injection.namespaceSelector",
                                             {"matchExpressions": [expression]}))


def bad_resources() -> st.SearchStrategy:
    """``spec.server.resources`` is free-form in the CRD (x-kubernetes-preserve-unknown-fields):
    what the API server then refuses in the Deployment must not break the operator."""
    values = st.one_of(
        st.sampled_from([{"limits": {"cpu": "lots"}}, {"requests": {"memory": "-1Gi"}},
                         {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}}, {"claims": "x"}]),
        st.dictionaries(st.sampled_from(["limits", "requests", "other"]), json_values, min_size=1, max_size=2),
    )
    return _set("bad-resources", "spec.server.resources", values)


def conflicts() -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(["gcs", "azure"]).map(_two_stores),
        st.sampled_from(["1GB", "128kB", "64MB"]).map(_shared_buffers_on_database_scope),
        st.booleans().map(_server_mode_without_server),
        st.just(_password_ref_without_name()),
        st.sampled_from([("In", _MISSING), ("In", []), ("Exists", ["x"]), ("DoesNotExist", ["a", "b"])])
        .map(lambda args: _bad_selector(*args)),
    )


def mutations() -> st.SearchStrategy:
    """Any one bad edit."""
    return st.one_of(wrong_types(), out_of_range(), bad_enums(), bad_strings(), negative_sizes(),
                     unknown_fields(), dropped_fields(), bad_metadata_names(), conflicts(), bad_resources())


# Edits of an existing object that the API must refuse: database and role are immutable.
def immutable_changes() -> st.SearchStrategy:
    def change(path: str, how: str) -> Mutation:
        if how == "drop":
            return Mutation("immutable", path, None, apply_fn=lambda obj: drop(obj, path))
        return Mutation("immutable", path, how, apply_fn=lambda obj: put(obj, path, how))
    return st.builds(change, st.sampled_from(["spec.postgres.database", "spec.postgres.role"]),
                     st.sampled_from(["drop", "other_name", "mlflow_changed"]))


# ---- bases -------------------------------------------------------------------------------

def full_spec(host: str, port: int, admin_secret: str = "pg-admin", extras: tuple[str, ...] = (),
              suffix: str = "x", s3_endpoint: str | None = None) -> dict:
    """A valid spec with the optional sections named in ``extras`` (tuning, s3, server,
    database); ``suffix`` makes the database and role names of one example its own."""
    spec: dict[str, Any] = {"postgres": {"external": {"host": host, "port": port, "sslMode": "disable",
                                                      "adminSecretRef": {"name": admin_secret}}}}
    if "tuning" in extras:
        spec["postgres"]["tuning"] = {"scope": "Database", "maxConnections": 60, "workMem": "8MB",
                                      "maintenanceWorkMem": "64MB", "serverMemory": "2Gi",
                                      "pool": {"size": 2, "maxOverflow": 3}, "expectedClients": 1}
    if "s3" in extras:
        spec["artifacts"] = {"s3": {"bucket": "trackop-bad-input", "prefix": "props", "createBucket": True,
                                    "credentialsSecretRef": {"name": "s3-keys"}}}
        if s3_endpoint:
            spec["artifacts"]["s3"]["endpoint"] = s3_endpoint
    if "server" in extras:
        spec["server"] = {"replicas": 1, "workers": 2, "allowedHosts": ["mlflow.example.com"]}
    if "database" in extras:
        spec["postgres"]["database"] = f"mlflow_props_db_{suffix}"
        spec["postgres"]["role"] = f"mlflow_props_role_{suffix}"
    return spec


extras_sets = st.sampled_from([(), ("tuning",), ("s3",), ("server",), ("tuning", "server"), ("database",),
                               ("tuning", "s3", "server", "database")])
