"""Hypothesis strategies for whole TrackingBackend specs, field by field: every field takes a
value from a wide set that ``parse`` must accept, and at most a few fields a near miss
(a value just past a rule, or one the stores or the API server would refuse) that ``parse``
may accept or refuse. ``specs()`` draws an object and the paths of its near-miss fields.

Used by tests/unit/test_parsed_specs_build.py: a spec that parses builds every object.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from trackop.api import validation

# ---- the values, per field: (valid, near misses) -------------------------------------------


def _fullmatch(pattern: str):
    return lambda value: re.fullmatch(pattern, value) is not None


def _accepted(rule):
    def accepts(value) -> bool:
        try:
            rule(value)
        except ValueError:
            return False
        return True
    return accepts


_label = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
object_names = (st.lists(_label, min_size=1, max_size=3).map(".".join), st.one_of(
    st.sampled_from(["Pg-Admin", "pg_admin", "pg..admin", ".pg", "pg.", "-pg", "a" * 254, "pg admin", "pg/admin"]),
    st.text(max_size=12)))
secret_keys = (st.from_regex(r"[-._a-zA-Z0-9]{1,20}", fullmatch=True)
               .filter(lambda k: k != "." and not k.startswith("..")),
               st.sampled_from([".", "..", "..key", "a b", "a/b", "", "k" * 254, "ключ"]))

_component = st.from_regex(r"[a-z0-9]{1,6}((\.|_|__|-{1,2})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_registry = st.sampled_from(["", "ghcr.io/", "docker.io/", "registry.example.com:5000/", "localhost/", "[::1]:5000/",
                             "10.0.0.1:5000/"])
_tag = st.one_of(st.just(""), st.from_regex(r":[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(st.just(""), st.just("@sha256:" + "a" * 64))
images = (st.builds(lambda reg, parts, tag, digest: reg + "/".join(parts) + tag + digest,
                    _registry, st.lists(_component, min_size=1, max_size=3), _tag, _digest),
          st.sampled_from(["", " image", "image ", "Team/MLflow", "a:b:c", "repo@sha256:abc", "x" * 600,
                           "image with blanks", "ghcr.io//mlflow", "-mlflow", "mlflow:", "mlflow:-tag", "ghcr.io/"]))

s3_buckets = (st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True)
              .filter(_accepted(validation.validate_bucket_name)),
              st.one_of(st.from_regex(r"[a-z0-9.-]{1,70}", fullmatch=True),
                        st.sampled_from(["a..b", "xn--abc", "192.168.1.1", "sthree-x", "x-s3alias", "b.mrap",
                                         "A-b", "ab", "1.2.3.04", "999.1.1.1", "bucket\n", "b" * 64])))
gcs_buckets = (st.from_regex(r"[a-z0-9][a-z0-9_-]{1,20}[a-z0-9](\.[a-z0-9][a-z0-9_-]{0,20}[a-z0-9]){0,3}",
                             fullmatch=True).filter(_accepted(validation.validate_gcs_bucket_name)),
               st.one_of(st.from_regex(r"[a-z0-9._-]{1,70}", fullmatch=True),
                         st.sampled_from(["goog-x", "my-google-bucket", "g00gle", "10.0.0.1", "a" * 64,
                                          "a." + "b" * 64, "a..b", "ab", "_ab"])))
azure_containers = (st.from_regex(r"[a-z0-9]{1,6}(-[a-z0-9]{1,6}){0,4}", fullmatch=True)
                    .filter(_accepted(validation.validate_azure_container_name)),
                    st.sampled_from(["a--b", "-ab", "ab-", "AB", "ab", "a" * 64, "a_b", "a.b"]))
azure_accounts = (st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True),
                  st.sampled_from(["ab", "ML01", "a" * 25, "ml-store", ""]))

prefixes = (st.lists(st.from_regex(r"[A-Za-z0-9!_*'()-][A-Za-z0-9!_.*'()-]{0,8}", fullmatch=True), max_size=3)
            .map(lambda parts: "/".join(parts)),
            st.sampled_from(["../team-b", "a/../b", "./a", "a/.", "a b", "tëam", "/a//b/", "a" * 513, "a?b"]))
_hosts = st.one_of(st.lists(_label, min_size=1, max_size=3).map(".".join),
                   st.sampled_from(["127.0.0.1", "[::1]", "[fd00::5]", "minio.minio.svc", "s3.eu-west-1.amazonaws.com"]))
_ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_paths = st.sampled_from(["", "/", "/devstoreaccount1", "/a/b", "/mlstore01/"])
endpoints = (st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
                       st.sampled_from(["http", "https"]), _hosts, _ports, _paths),
             st.sampled_from(["http://", "ftp://x", "http://a..b", "http://user:pw@host", "http://host:0",
                              "http://host:65536", "http://[zz]", "http://[:::]:9000", "http://host?x=1",
                              "http://host#f", "http://-a.b", f"http://{'a' * 64}.com", "http://host:9000 ",
                              "HTTP://host", "http://[::1", "http://host:0080"]))
regions = (st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda r: not r.isdigit()),
           st.sampled_from(["", "-", "0", "12", "EU-WEST-1", "eu_west", "a" * 64, "eu-west-1-"]))
projects = (st.one_of(st.from_regex(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", fullmatch=True),
                      st.just("example.com:my-project")),
            st.sampled_from(["ab", "My-Project", "proj_x", "a" * 31, "project-"]))

allowed_hosts = (st.lists(st.one_of(_hosts, st.sampled_from(["*.example.com", "mlflow.example.com:*", "[::1]:*"])),
                          max_size=4),
                 st.sampled_from([["a b"], ["a,b"], [""], ["x"] * 33, ["a" * 254], [1], "mlflow.example.com"]))

_selectors_valid = st.sampled_from([
    {}, {"matchLabels": {"team": "a"}},
    {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
    {"matchExpressions": [{"key": "team", "operator": "Exists"}, {"key": "x", "operator": "NotIn", "values": ["y"]}]},
    {"matchLabels": {"env": "dev"}, "matchExpressions": [{"key": "off", "operator": "DoesNotExist", "values": []}]},
])
namespace_selectors = (_selectors_valid, st.sampled_from([
    {"matchExpressions": [{"key": "team", "operator": "In"}]},
    {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]},
    {"matchExpressions": {"key": "team", "operator": "Exists"}},
    {"matchExpressions": [{"key": "team", "operator": "In", "values": "abc"}]},
    {"matchExpressions": ["team"]}, {"matchExpressions": [{"operator": "Exists"}]},
    {"matchLabels": {"team": 1}}, {"matchLabels": ["team"]}, {"other": {}},
    {"matchExpressions": [{"key": "team", "operator": "Near", "values": ["a"]}]},
]))

_cpu = st.sampled_from(["100m", "250m", "1", "2", 1, 0.5, "1.5", "0"])
_memory = st.sampled_from(["128Mi", "512Mi", "1Gi", "2G", 1073741824, "1.5Gi", "1e9"])


@st.composite
def _valid_resources(draw) -> dict[str, Any] | None:
    from kubernetes.utils import parse_quantity

    resources: dict[str, Any] = {}
    for kind in draw(st.sets(st.sampled_from(["limits", "requests"]))):
        resources[kind] = draw(st.fixed_dictionaries({}, optional={"cpu": _cpu, "memory": _memory}))
    for name, value in list((resources.get("requests") or {}).items()):
        limit = (resources.get("limits") or {}).get(name)
        if limit is not None and parse_quantity(value) > parse_quantity(limit):
            resources["requests"][name] = limit
    if draw(st.booleans()) and resources:
        gpus = draw(st.integers(0, 4))
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
        if "requests" in resources:
            resources["requests"]["nvidia.com/gpu"] = str(gpus)
    return resources or None


resources = (_valid_resources(), st.sampled_from([
    {"limits": {"cpu": "lots"}}, {"requests": {"memory": "-1Gi"}}, {"limits": {"memory": "1Gi"},
                                                                    "requests": {"memory": "2Gi"}},
    {"claims": [{"name": "gpu"}]}, {"requests": {"nvidia.com/gpu": 1}}, {"limits": {"nvidia.com/gpu": 0.5}},
    {"limits": {"gpu": 1}}, {"limits": {"hugepages-2Mi": "3Mi", "memory": "1Gi"}}, {"limits": {"hugepages-2Mi": "2Mi"}},
    {"limits": {"cpu": True}}, {"limits": {"cpu": None}}, {"limits": "1"}, {"limits": {"cpu": "1e40"}},
    {"limits": {"kubernetes.io/x": 1}}, {"requests": {"cpu": [1]}}, {"limits": {"memory": float("nan")}},
]))
storage_sizes = (st.sampled_from(["10Gi", "1", "0.5Gi", "100M", "1Ti"]),
                 st.sampled_from(["0", "0Gi", "0.0Mi", "-1Gi", "10GB", "1e3", ""]))

tunings = st.sampled_from([
    None,
    {"scope": "Database", "maxConnections": 60, "workMem": "8MB", "maintenanceWorkMem": "64MB",
     "serverMemory": "2Gi", "pool": {"size": 2, "maxOverflow": 3}, "expectedClients": 1},
    {"scope": "Server", "maxConnections": 200, "sharedBuffers": "1GB", "serverMemory": "8Gi"},
    {"scope": "Server", "workMem": "64kB"},
    {"pool": {"size": 1, "maxOverflow": 0}, "expectedClients": 100},
])


# ---- a whole spec ---------------------------------------------------------------------------

# The fields that may get a near miss, and where their values come from.
NEAR = {
    "metadata.name": (st.from_regex(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?", fullmatch=True),
                      st.sampled_from(["a" * 44, "a" * 45, "a" * 46, "Team-A", "team_a", "1team"])),
    "spec.postgres.external.adminSecretRef.name": object_names,
    "spec.postgres.passwordSecretRef.name": object_names,
    "spec.postgres.passwordSecretRef.key": secret_keys,
    "spec.schema.image": images,
    "spec.postgres.managed.image": images,
    "spec.postgres.managed.storage.size": storage_sizes,
    "spec.postgres.managed.storage.storageClassName": object_names,
    "spec.postgres.managed.resources": resources,
    "spec.artifacts.s3.bucket": s3_buckets,
    "spec.artifacts.gcs.bucket": gcs_buckets,
    "spec.artifacts.azure.container": azure_containers,
    "spec.artifacts.azure.storageAccount": azure_accounts,
    "spec.artifacts.prefix": prefixes,
    "spec.artifacts.endpoint": endpoints,
    "spec.artifacts.s3.region": regions,
    "spec.artifacts.gcs.project": projects,
    "spec.artifacts.credentialsSecretRef.name": object_names,
    "spec.artifacts.credentialsSecretRef.key": secret_keys,
    "spec.server.image": images,
    "spec.server.serviceAccountName": object_names,
    "spec.server.allowedHosts": allowed_hosts,
    "spec.server.resources": resources,
    "spec.injection.namespaceSelector": namespace_selectors,
}


@st.composite
def specs(draw) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A TrackingBackend (metadata and spec) and the paths of the fields that got a near miss."""
    near = set(draw(st.lists(st.sampled_from(sorted(NEAR)), max_size=2)))

    def value(path: str) -> Any:
        valid, miss = NEAR[path]
        return draw(miss if path in near else valid)

    name = value("metadata.name")
    managed = draw(st.booleans())
    postgres: dict[str, Any] = {"driver": draw(st.sampled_from(["psycopg", "psycopg2"]))}
    if managed:
        engine = draw(st.sampled_from(["StatefulSet", "CloudNativePG"]))
        postgres["managed"] = {"engine": engine, "version": draw(st.sampled_from(["13", "16", "17"])),
                               "instances": 1 if engine == "StatefulSet" else draw(st.integers(1, 9)),
                               "port": 5432 if engine == "CloudNativePG" else draw(st.integers(1024, 65535)),
                               "storage": {"size": value("spec.postgres.managed.storage.size")}}
        if draw(st.booleans()):
            postgres["managed"]["image"] = value("spec.postgres.managed.image")
        if draw(st.booleans()):
            postgres["managed"]["storage"]["storageClassName"] = value("spec.postgres.managed.storage.storageClassName")
        postgres["managed"]["resources"] = value("spec.postgres.managed.resources")
    else:
        postgres["external"] = {"host": draw(st.sampled_from(["pg.db.svc", "10.0.0.5", "fd00::5", "localhost"])),
                                "port": draw(st.integers(1, 65535)),
                                "sslMode": draw(st.sampled_from(["disable", "prefer", "verify-full"])),
                                "adminSecretRef": {"name": value("spec.postgres.external.adminSecretRef.name")}}
    if draw(st.booleans()):
        postgres["passwordSecretRef"] = {"name": value("spec.postgres.passwordSecretRef.name"),
                                         "key": value("spec.postgres.passwordSecretRef.key")}
    tuning = draw(tunings)
    if tuning is not None:
        postgres["tuning"] = tuning
    spec: dict[str, Any] = {"postgres": postgres, "deletionPolicy": draw(st.sampled_from(["Retain", "Delete"])),
                            "schema": {"mlflowVersion": draw(st.sampled_from(["3.17.2", "2.22.1"])),
                                       "migration": draw(st.sampled_from(["Inline", "Job"]))}}
    if draw(st.booleans()):
        spec["schema"]["image"] = value("spec.schema.image")
    kind = draw(st.sampled_from([None, "s3", "gcs", "azure"]))
    if kind is not None:
        spec["artifacts"] = {kind: _store(draw, kind, value)}
    server = None
    if draw(st.booleans()):
        server = {"enabled": draw(st.booleans()), "replicas": draw(st.integers(0, 50)),
                  "workers": draw(st.integers(1, 32)), "port": draw(st.integers(1024, 65535)),
                  "serveArtifacts": draw(st.booleans()), "jobExecution": draw(st.booleans()),
                  "allowedHosts": value("spec.server.allowedHosts"),
                  "resources": value("spec.server.resources")}
        if draw(st.booleans()):
            server["image"] = value("spec.server.image")
        if draw(st.booleans()):
            server["serviceAccountName"] = value("spec.server.serviceAccountName")
        spec["server"] = server
    injection: dict[str, Any] = {}
    if server is not None and server["enabled"] and draw(st.booleans()):
        injection["mode"] = draw(st.sampled_from(["Server", "Direct"]))
    elif draw(st.booleans()):
        injection["mode"] = "Direct"
    if draw(st.booleans()):
        injection["namespaceSelector"] = value("spec.injection.namespaceSelector")
    spec["injection"] = injection
    return {"metadata": {"name": name, "namespace": "team-ns"}, "spec": spec}, tuple(sorted(near))


def _store(draw, kind: str, value) -> dict[str, Any]:
    store: dict[str, Any] = {"container" if kind == "azure" else "bucket":
                             value({"s3": "spec.artifacts.s3.bucket", "gcs": "spec.artifacts.gcs.bucket",
                                    "azure": "spec.artifacts.azure.container"}[kind]),
                             "createContainer" if kind == "azure" else "createBucket": draw(st.booleans())}
    if draw(st.booleans()):
        store["prefix"] = value("spec.artifacts.prefix")
    if draw(st.booleans()):
        store["endpoint"] = value("spec.artifacts.endpoint")
    if draw(st.booleans()):
        credentials = {"name": value("spec.artifacts.credentialsSecretRef.name")}
        for key in (("accessKeyIdKey", "secretAccessKeyKey") if kind == "s3" else ("key",)):
            if draw(st.booleans()):
                credentials[key] = value("spec.artifacts.credentialsSecretRef.key")
        store["credentialsSecretRef"] = credentials
    if kind == "s3" and draw(st.booleans()):
        store["region"] = value("spec.artifacts.s3.region")
    if kind == "gcs" and draw(st.booleans()):
        store["project"] = value("spec.artifacts.gcs.project")
    if kind == "azure":
        store["storageAccount"] = value("spec.artifacts.azure.storageAccount")
    return store


def names_the_near_miss(error_field: str, near: tuple[str, ...]) -> bool:
    """Whether a SpecError's field is one of the near-miss fields (the store-generic paths
    ``spec.artifacts.prefix`` and the like stand for each store's own), an ancestor or a
    descendant of one."""
    generic = re.sub(r"^spec\.artifacts\.(s3|gcs|azure)\.", "spec.artifacts.", error_field)
    generic = re.sub(r"\.(accessKeyIdKey|secretAccessKeyKey)$", ".key", generic)
    for path in near:
        for candidate in (error_field, generic):
            if candidate == path or candidate.startswith(path + ".") or path.startswith(candidate + "."):
                return True
    return False
