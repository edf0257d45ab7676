"""Typed view of a ``TrackingBackend``: spec parsing, defaults and derived names (pure).

The CRD's schema is the first line of validation; this module checks again, so an
object that reached the operator some other way (an older CRD, a direct etcd write)
still cannot smuggle an unsafe identifier into SQL.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .tuning import TuningError, TuningSpec, parse_tuning

GROUP = "trackop.dev"
VERSION = "v1alpha1"
PLURAL = "trackingbackends"
KIND = "TrackingBackend"

DEFAULT_MLFLOW_VERSION = "3.17.2"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
BACKEND_LABEL = "trackop.dev/backend"
MANAGED_BY = "trackop"

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DRIVERS = {"psycopg": "postgresql+psycopg", "psycopg2": "postgresql+psycopg2"}
MIGRATION_MODES = ("Inline", "Job")
DELETION_POLICIES = ("Retain", "Delete")
INJECTION_MODES = ("Server", "Direct")
ENGINE_STATEFULSET = "StatefulSet"
ENGINE_CNPG = "CloudNativePG"
ENGINES = (ENGINE_STATEFULSET, ENGINE_CNPG)
DEFAULT_POSTGRES_VERSION = "17"
DEFAULT_STORAGE_SIZE = "10Gi"
# PostgreSQL's own default, which trackop does not change on the servers it deploys: a
# max_connections at or below it leaves no slot for anyone but a superuser, and the
# server refuses to start at all.
SUPERUSER_RESERVED_CONNECTIONS = 3

# PostgreSQL's NAMEDATALEN is 64: identifiers are at most 63 bytes.
MAX_IDENTIFIER = 63
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
_RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})
_RESERVED_ROLES = frozenset({"postgres", "public", "current_user", "session_user", "current_role", "none"})
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
# The backend's name is part of Service, Job and label values: a DNS-1035 label with room
# for the suffixes trackop adds ("-mlflow", "-migrate-<hash>").
MAX_BACKEND_NAME = 45
_BACKEND_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# A managed server's StatefulSet is "<name>-postgres"; the StatefulSet controller labels its
# pods with "<statefulset>-<10-character hash>", which must fit a 63-character label value.
MAX_MANAGED_BACKEND_NAME = 43
MANAGED_SUFFIX = "-postgres"
_MAJOR_VERSION = re.compile(r"[0-9]{2}")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


class SpecError(ValueError):
    """The spec is invalid; ``field`` names the offending path for conditions and events."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


@dataclass(frozen=True)
class ExternalServer:
    host: str
    port: int
    ssl_mode: str
    admin_secret: str
    connect_timeout: int


@dataclass(frozen=True)
class ManagedServer:
    """``spec.postgres.managed``: a PostgreSQL server trackop deploys for this backend alone."""

    engine: str                          # StatefulSet | CloudNativePG
    name: str                            # StatefulSet/Service/Secret, or the CNPG Cluster: <backend>-postgres
    version: str                         # PostgreSQL major version, "17"
    image: str
    port: int
    instances: int                       # always 1 for StatefulSet
    storage_size: str
    storage_class: str | None
    resources: Mapping[str, Any] | None

    @property
    def service(self) -> str:
        """The Service clients reach the server (CloudNativePG: the primary) through."""
        return f"{self.name}-rw" if self.engine == ENGINE_CNPG else self.name

    @property
    def superuser_secret(self) -> str:
        """The Secret with the superuser's username and password (CloudNativePG makes its own)."""
        return f"{self.name}-superuser" if self.engine == ENGINE_CNPG else self.name


@dataclass(frozen=True)
class ArtifactStore:
    """``spec.artifacts``: one bucket (S3, GCS) or container (Azure) and a prefix."""

    kind: str                           # "s3" | "gcs" | "azure"
    bucket: str                         # the Azure container for azure
    prefix: str
    endpoint: str | None                # S3-compatible stores, emulators, private endpoints
    create: bool                        # createBucket / createContainer
    credentials_secret: str | None
    credential_keys: tuple[str, ...]    # s3: access key id, secret key; gcs: key JSON; azure: account key
    region: str = "us-east-1"           # s3
    project: str | None = None          # gcs
    account: str | None = None          # azure

    @property
    def field(self) -> str:
        return f"spec.artifacts.{self.kind}"

    @property
    def uri(self) -> str:
        """The artifact root in the form MLflow's artifact repository for the store parses."""
        base = {
            "s3": f"s3://{self.bucket}",
            "gcs": f"gs://{self.bucket}",
            "azure": f"wasbs://{self.bucket}@{self.account}.blob.core.windows.net",
        }[self.kind]
        return f"{base}/{self.prefix}" if self.prefix else base


@dataclass(frozen=True)
class ServerSpec:
    enabled: bool
    replicas: int
    workers: int
    image: str
    port: int
    serve_artifacts: bool
    service_account: str | None
    allowed_hosts: tuple[str, ...]
    resources: Mapping[str, Any] | None


@dataclass(frozen=True)
class BackendSpec:
    namespace: str
    name: str
    server: ExternalServer
    database: str
    role: str
    password_secret: SecretRef | None
    driver: str
    mlflow_version: str
    migration: str
    migration_image: str
    deletion_policy: str
    tuning: "TuningSpec | None" = None
    artifacts: ArtifactStore | None = None
    tracking_server: ServerSpec | None = None  # None: no tracking server
    injection_mode: str = "Direct"
    # spec.injection.namespaceSelector: other namespaces whose pods may be injected.
    namespace_selector: Mapping[str, Any] | None = None
    # spec.postgres.managed: trackop deploys the server; ``server`` is then its Service.
    managed: ManagedServer | None = None

    @property
    def effective_tuning(self) -> TuningSpec:
        """``spec.postgres.tuning``, or its defaults (pool sizes) when none is given."""
        return self.tuning or parse_tuning(None)

    @property
    def server_name(self) -> str:
        """The tracking server's Deployment and Service."""
        return f"{self.name}-mlflow"

    @property
    def tracking_server_uri(self) -> str | None:
        if self.tracking_server is None:
            return None
        return f"http://{self.server_name}.{self.namespace}.svc:{self.tracking_server.port}"

    @property
    def owner_marker(self) -> str:
        """The comment trackop puts on the role and database it made, to recognise them later."""
        return f"managed by trackop for TrackingBackend {self.namespace}/{self.name}"

    @property
    def connection_secret(self) -> str:
        return connection_secret_name(self.name)

    @property
    def migration_job(self) -> str:
        # A new MLflow version or image gets a new Job; a failed one stays for its logs.
        return migration_job_name(self.name, f"{self.mlflow_version} {self.migration_image}")

    @property
    def url_scheme(self) -> str:
        return DRIVERS[self.driver]


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


def check_backend_name(name: str) -> str:
    if not _BACKEND_NAME.fullmatch(name) or len(name) > MAX_BACKEND_NAME:
        raise SpecError("metadata.name", f"must be a DNS-1035 label of at most {MAX_BACKEND_NAME} characters "
                                         "(it names the backend's Service, Secret and Jobs)")
    return name


def check_host(host: object) -> str:
    """A DNS name or an IP address, never a host:port pair."""
    if isinstance(host, str) and len(host) <= 253:
        if _HOST_NAME.fullmatch(host):
            return host
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
    raise SpecError("spec.postgres.external.host", "must be a host name or an IP address (put the port in port)")


def check_identifier(field: str, value: str, reserved: frozenset[str]) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise SpecError(field, "must match ^[a-z_][a-z0-9_]*$ (lowercase letters, digits, underscore)")
    if len(value.encode()) > MAX_IDENTIFIER:
        raise SpecError(field, f"must be at most {MAX_IDENTIFIER} characters")
    if value in reserved:
        raise SpecError(field, f"{value!r} is reserved")
    return value


def _get(mapping: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if mapping is None:
        return default
    value = mapping.get(key)
    return default if value is None else value


# The typed getters below refuse a value of the wrong type with a SpecError naming it: a
# spec that bypassed the CRD's schema must not raise anything else (the handlers and the
# webhook catch only SpecError).

def _object(mapping: Mapping[str, Any] | None, key: str, field: str) -> Mapping[str, Any] | None:
    value = _get(mapping, key)
    if value is not None and not isinstance(value, Mapping):
        raise SpecError(field, "must be an object")
    return value


def _string(mapping: Mapping[str, Any] | None, key: str, field: str, default: str | None = None) -> str | None:
    value = _get(mapping, key, default)
    if value is not None and not isinstance(value, str):
        raise SpecError(field, "must be a string")
    return value


def _choice(mapping: Mapping[str, Any] | None, key: str, field: str, default: str, choices) -> str:
    value = _get(mapping, key, default)
    if not isinstance(value, str) or value not in choices:
        raise SpecError(field, f"must be one of {', '.join(choices)}")
    return value


def _boolean(mapping: Mapping[str, Any] | None, key: str, field: str, default: bool) -> bool:
    value = _get(mapping, key, default)
    if not isinstance(value, bool):
        raise SpecError(field, "must be true or false")
    return value


def _integer(mapping: Mapping[str, Any] | None, key: str, field: str, default: int, low: int, high: int) -> int:
    value = _get(mapping, key, default)
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass
        raise SpecError(field, f"must be an integer from {low} to {high}")
    return value


def parse(namespace: str, name: str, spec: Mapping[str, Any]) -> BackendSpec:
    """The spec with every default applied; raises SpecError naming the field."""
    check_backend_name(name)
    if not isinstance(spec, Mapping):
        raise SpecError("spec", "must be an object")
    postgres = _object(spec, "postgres", "spec.postgres") or {}
    external = _object(postgres, "external", "spec.postgres.external")
    managed_spec = _object(postgres, "managed", "spec.postgres.managed")
    if external and managed_spec is not None:
        raise SpecError("spec.postgres", "set exactly one of external and managed")
    managed = None
    if managed_spec is not None:
        managed = _parse_managed(namespace, name, managed_spec)
        server = managed_connection(namespace, managed)
    elif not external:
        raise SpecError("spec.postgres.external", "is required (or spec.postgres.managed, for a server trackop "
                                                  "deploys)")
    else:
        server = _parse_external(external)

    database = check_identifier(
        "spec.postgres.database", _get(postgres, "database") or default_database_name(namespace, name),
        _RESERVED_DATABASES,
    )
    # When the role is derived from the database, an error about it is the database's.
    role_field = "spec.postgres.role" if _get(postgres, "role") else "spec.postgres.database"
    role = check_identifier(role_field, _get(postgres, "role") or database, _RESERVED_ROLES)
    if role.startswith("pg_"):
        raise SpecError(role_field, "role names starting with pg_ are reserved by PostgreSQL")
    password_ref = _object(postgres, "passwordSecretRef", "spec.postgres.passwordSecretRef")
    password_secret = None
    if password_ref:
        password_name = _string(password_ref, "name", "spec.postgres.passwordSecretRef.name")
        if not password_name:
            raise SpecError("spec.postgres.passwordSecretRef.name", "is required")
        password_secret = SecretRef(password_name, _string(password_ref, "key", "spec.postgres.passwordSecretRef.key",
                                                           "password"))
    driver = _choice(postgres, "driver", "spec.postgres.driver", "psycopg", tuple(DRIVERS))

    schema = _object(spec, "schema", "spec.schema") or {}
    mlflow_version = _get(schema, "mlflowVersion", DEFAULT_MLFLOW_VERSION)
    if not isinstance(mlflow_version, str) or not _VERSION.fullmatch(mlflow_version):
        raise SpecError("spec.schema.mlflowVersion", "must look like 3.17.2")
    migration = _choice(schema, "migration", "spec.schema.migration", "Inline", MIGRATION_MODES)
    migration_image = _string(schema, "image", "spec.schema.image", f"ghcr.io/mlflow/mlflow:v{mlflow_version}")
    deletion_policy = _choice(spec, "deletionPolicy", "spec.deletionPolicy", "Retain", DELETION_POLICIES)

    try:
        raw_tuning = _get(postgres, "tuning")
        tuning = parse_tuning(raw_tuning) if raw_tuning is not None else None
    except TuningError as error:
        raise SpecError(error.field, error.message) from None
    if managed is not None and tuning is not None and tuning.max_connections is not None \
            and tuning.max_connections <= SUPERUSER_RESERVED_CONNECTIONS:
        # Startup parameters of a server trackop runs: PostgreSQL would refuse to start.
        raise SpecError("spec.postgres.tuning.maxConnections",
                        f"must be more than superuser_reserved_connections ({SUPERUSER_RESERVED_CONNECTIONS}) on a "
                        "managed server, which would otherwise refuse to start")
    artifacts = _parse_artifacts(_object(spec, "artifacts", "spec.artifacts") or {})
    tracking_server = _parse_server(_object(spec, "server", "spec.server"), mlflow_version)
    injection = _object(spec, "injection", "spec.injection") or {}
    injection_mode = _choice(injection, "mode", "spec.injection.mode", "Server" if tracking_server else "Direct",
                             INJECTION_MODES)
    if injection_mode == "Server" and tracking_server is None:
        raise SpecError("spec.injection.mode", "Server needs spec.server (the tracking server) enabled")
    namespace_selector = _object(injection, "namespaceSelector", "spec.injection.namespaceSelector")

    return BackendSpec(
        namespace=namespace,
        name=name,
        server=server,
        database=database,
        role=role,
        password_secret=password_secret,
        driver=driver,
        mlflow_version=mlflow_version,
        migration=migration,
        migration_image=migration_image,
        deletion_policy=deletion_policy,
        tuning=tuning,
        artifacts=artifacts,
        tracking_server=tracking_server,
        injection_mode=injection_mode,
        namespace_selector=namespace_selector,
        managed=managed,
    )


def _parse_external(external: Mapping[str, Any]) -> ExternalServer:
    host = check_host(_get(external, "host", ""))
    port = _integer(external, "port", "spec.postgres.external.port", 5432, 1, 65535)
    ssl_mode = _choice(external, "sslMode", "spec.postgres.external.sslMode", "prefer", SSL_MODES)
    admin_secret = _string(_object(external, "adminSecretRef", "spec.postgres.external.adminSecretRef"), "name",
                           "spec.postgres.external.adminSecretRef.name")
    if not admin_secret:
        raise SpecError("spec.postgres.external.adminSecretRef.name", "is required")
    connect_timeout = _integer(external, "connectTimeoutSeconds", "spec.postgres.external.connectTimeoutSeconds",
                               5, 1, 60)
    return ExternalServer(host, port, ssl_mode, admin_secret, connect_timeout)


def _parse_managed(namespace: str, name: str, managed: Mapping[str, Any]) -> ManagedServer:
    field = "spec.postgres.managed"
    if len(name) > MAX_MANAGED_BACKEND_NAME:
        raise SpecError("metadata.name", f"must be at most {MAX_MANAGED_BACKEND_NAME} characters with "
                                         f"{field} (it names the StatefulSet {name}{MANAGED_SUFFIX}, whose pods' "
                                         "revision label must fit 63 characters)")
    engine = _choice(managed, "engine", f"{field}.engine", ENGINE_STATEFULSET, ENGINES)
    version = _string(managed, "version", f"{field}.version", DEFAULT_POSTGRES_VERSION)
    if not _MAJOR_VERSION.fullmatch(version) or int(version) < 13:
        raise SpecError(f"{field}.version", "must be a PostgreSQL major version of 13 or later, like 17")
    default_image = (f"ghcr.io/cloudnative-pg/postgresql:{version}" if engine == ENGINE_CNPG
                     else f"docker.io/library/postgres:{version}")
    image = _string(managed, "image", f"{field}.image", default_image) or default_image
    port = _integer(managed, "port", f"{field}.port", 5432, 1024, 65535)
    if engine == ENGINE_CNPG and port != 5432:
        raise SpecError(f"{field}.port", "CloudNativePG always serves on 5432: remove port")
    instances = _integer(managed, "instances", f"{field}.instances", 1, 1, 9)
    if engine == ENGINE_STATEFULSET and instances != 1:
        raise SpecError(f"{field}.instances", "engine StatefulSet runs a single instance; use engine "
                                               "CloudNativePG for replicas and failover")
    storage = _object(managed, "storage", f"{field}.storage") or {}
    size = _string(storage, "size", f"{field}.storage.size", DEFAULT_STORAGE_SIZE)
    if not _QUANTITY.fullmatch(size):
        raise SpecError(f"{field}.storage.size", "must be a Kubernetes quantity such as 10Gi")
    storage_class = _string(storage, "storageClassName", f"{field}.storage.storageClassName") or None
    return ManagedServer(
        engine=engine,
        name=f"{name}{MANAGED_SUFFIX}",
        version=version,
        image=image,
        port=port,
        instances=instances,
        storage_size=size,
        storage_class=storage_class,
        resources=_object(managed, "resources", f"{field}.resources"),
    )


def managed_connection(namespace: str, managed: ManagedServer) -> ExternalServer:
    """How workloads reach a managed server: its Service's cluster DNS name, as the superuser
    Secret's admin. The deployed image serves no TLS; CloudNativePG serves its own."""
    return ExternalServer(
        host=f"{managed.service}.{namespace}.svc",
        port=managed.port,
        ssl_mode="require" if managed.engine == ENGINE_CNPG else "disable",
        admin_secret=managed.superuser_secret,
        connect_timeout=5,
    )


_BUCKET = {
    "s3": re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    "gcs": re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"),
    "azure": re.compile(r"[a-z0-9]([a-z0-9-]{1,61})[a-z0-9]"),
}
_DEFAULT_KEYS = {"s3": ("accessKeyId", "secretAccessKey"), "gcs": ("serviceAccountKey",), "azure": ("accountKey",)}


def _parse_artifacts(artifacts: Mapping[str, Any]) -> ArtifactStore | None:
    given = [kind for kind in ("s3", "gcs", "azure") if _get(artifacts, kind)]
    if not given:
        return None
    if len(given) > 1:
        raise SpecError("spec.artifacts", "set exactly one of s3, gcs and azure")
    kind = given[0]
    field = f"spec.artifacts.{kind}"
    store = _object(artifacts, kind, field)
    bucket_key = "container" if kind == "azure" else "bucket"
    bucket = _get(store, bucket_key, "")
    if not isinstance(bucket, str) or not _BUCKET[kind].fullmatch(bucket):
        raise SpecError(f"{field}.{bucket_key}", "is not a valid name for this store")
    prefix = "/".join(part for part in _string(store, "prefix", f"{field}.prefix", "").split("/") if part)
    endpoint = _string(store, "endpoint", f"{field}.endpoint") or None
    if endpoint is not None and not re.fullmatch(r"https?://\S+", endpoint):
        raise SpecError(f"{field}.endpoint", "must be an http(s) URL")
    credentials = _object(store, "credentialsSecretRef", f"{field}.credentialsSecretRef")
    secret_field = f"{field}.credentialsSecretRef"
    if kind == "s3":
        keys = (_string(credentials, "accessKeyIdKey", f"{secret_field}.accessKeyIdKey", "accessKeyId"),
                _string(credentials, "secretAccessKeyKey", f"{secret_field}.secretAccessKeyKey", "secretAccessKey"))
    else:
        keys = (_string(credentials, "key", f"{secret_field}.key", _DEFAULT_KEYS[kind][0]),)
    credentials_secret = _string(credentials, "name", f"{secret_field}.name") if credentials else None
    create_key = "createContainer" if kind == "azure" else "createBucket"
    create = _boolean(store, create_key, f"{field}.{create_key}", False)
    region = _string(store, "region", f"{field}.region", "us-east-1")
    project = _string(store, "project", f"{field}.project")
    account = _get(store, "storageAccount")
    if kind == "azure" and not (isinstance(account, str) and re.fullmatch(r"[a-z0-9]{3,24}", account)):
        raise SpecError(f"{field}.storageAccount", "must be 3 to 24 lowercase letters and digits")
    return ArtifactStore(
        kind=kind,
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        create=create,
        credentials_secret=credentials_secret,
        credential_keys=keys,
        region=region,
        project=project,
        account=account,
    )


def _parse_server(server: Mapping[str, Any] | None, mlflow_version: str) -> ServerSpec | None:
    if server is None or not _boolean(server, "enabled", "spec.server.enabled", True):
        return None

    def bounded(key: str, default: int, low: int, high: int) -> int:
        return _integer(server, key, f"spec.server.{key}", default, low, high)

    allowed_hosts = _get(server, "allowedHosts", [])
    if not isinstance(allowed_hosts, list) or not all(isinstance(host, str) for host in allowed_hosts):
        raise SpecError("spec.server.allowedHosts", "must be a list of strings")

    return ServerSpec(
        enabled=True,
        replicas=bounded("replicas", 1, 0, 50),
        workers=bounded("workers", 2, 1, 32),
        image=_string(server, "image", "spec.server.image", f"ghcr.io/mlflow/mlflow:v{mlflow_version}"),
        port=bounded("port", 5000, 1024, 65535),
        serve_artifacts=_boolean(server, "serveArtifacts", "spec.server.serveArtifacts", True),
        service_account=_string(server, "serviceAccountName", "spec.server.serviceAccountName") or None,
        allowed_hosts=tuple(allowed_hosts),
        resources=_object(server, "resources", "spec.server.resources"),
    )
