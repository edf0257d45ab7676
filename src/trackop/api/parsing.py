"""``parse``: a ``TrackingBackend``'s spec in, its typed view out, with defaults (pure).

The CRD's schema is the first line of validation; parsing checks again (through
``validation``), so an object that reached the operator some other way (an older CRD, a
direct etcd write) still cannot smuggle an unsafe identifier into SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .names import default_database_name
from .resources import check_positive_quantity, check_resources
from .tuning import TuningError, parse_tuning
from .v1alpha1 import (
    DEFAULT_MLFLOW_VERSION,
    DEFAULT_POSTGRES_VERSION,
    DEFAULT_PROGRESS_DEADLINE,
    DEFAULT_STORAGE_SIZE,
    DELETION_POLICIES,
    DRIVERS,
    ENGINE_CNPG,
    ENGINE_STATEFULSET,
    ENGINES,
    INJECTION_MODES,
    MANAGED_SUFFIX,
    MAX_MANAGED_BACKEND_NAME,
    MIGRATION_MODES,
    SSL_MODES,
    SUPERUSER_RESERVED_CONNECTIONS,
    ArtifactStore,
    BackendSpec,
    ManagedServer,
    PostgresEndpoint,
    SecretRef,
    SpecError,
    TrackingServerSpec,
)
from .validation import (
    _RESERVED_DATABASES,
    _RESERVED_ROLES,
    check_allowed_hosts,
    check_backend_name,
    check_endpoint,
    check_gcs_project,
    check_host,
    check_identifier,
    check_image,
    check_label_selector,
    check_object_name,
    check_prefix,
    check_region,
    check_secret_key,
    validate_azure_account_name,
    validate_azure_container_name,
    validate_bucket_name,
    validate_gcs_bucket_name,
)

_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")

_MAJOR_VERSION = re.compile(r"[0-9]{2}")

_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")

_STORE_NAME_RULES = {"s3": validate_bucket_name, "gcs": validate_gcs_bucket_name,
                     "azure": validate_azure_container_name}


def _get(mapping: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if mapping is None:
        return default
    value = mapping.get(key)
    return default if value is None else value


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
        key_field = "spec.postgres.passwordSecretRef.key"
        password_secret = SecretRef(check_object_name("spec.postgres.passwordSecretRef.name", password_name),
                                    check_secret_key(key_field, _string(password_ref, "key", key_field, "password")))
    driver = _choice(postgres, "driver", "spec.postgres.driver", "psycopg", tuple(DRIVERS))

    schema = _object(spec, "schema", "spec.schema") or {}
    mlflow_version = _get(schema, "mlflowVersion", DEFAULT_MLFLOW_VERSION)
    if not isinstance(mlflow_version, str) or not _VERSION.fullmatch(mlflow_version):
        raise SpecError("spec.schema.mlflowVersion", "must look like 3.17.2")
    migration = _choice(schema, "migration", "spec.schema.migration", "Inline", MIGRATION_MODES)
    migration_image = check_image("spec.schema.image", _string(schema, "image", "spec.schema.image",
                                                               f"ghcr.io/mlflow/mlflow:v{mlflow_version}"))
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
    if namespace_selector is not None:
        check_label_selector("spec.injection.namespaceSelector", namespace_selector)

    return BackendSpec(
        namespace=namespace,
        name=name,
        postgres=server,
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


def _parse_external(external: Mapping[str, Any]) -> PostgresEndpoint:
    host = check_host(_get(external, "host", ""))
    port = _integer(external, "port", "spec.postgres.external.port", 5432, 1, 65535)
    ssl_mode = _choice(external, "sslMode", "spec.postgres.external.sslMode", "prefer", SSL_MODES)
    admin_secret = _string(_object(external, "adminSecretRef", "spec.postgres.external.adminSecretRef"), "name",
                           "spec.postgres.external.adminSecretRef.name")
    if not admin_secret:
        raise SpecError("spec.postgres.external.adminSecretRef.name", "is required")
    check_object_name("spec.postgres.external.adminSecretRef.name", admin_secret)
    connect_timeout = _integer(external, "connectTimeoutSeconds", "spec.postgres.external.connectTimeoutSeconds",
                               5, 1, 60)
    return PostgresEndpoint(host, port, ssl_mode, admin_secret, connect_timeout)


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
    image = check_image(f"{field}.image", _string(managed, "image", f"{field}.image", default_image) or default_image)
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
    check_positive_quantity(f"{field}.storage.size", size)
    storage_class = _string(storage, "storageClassName", f"{field}.storage.storageClassName") or None
    if storage_class is not None:
        check_object_name(f"{field}.storage.storageClassName", storage_class)
    return ManagedServer(
        engine=engine,
        name=f"{name}{MANAGED_SUFFIX}",
        version=version,
        image=image,
        port=port,
        instances=instances,
        storage_size=size,
        storage_class=storage_class,
        resources=check_resources(f"{field}.resources", _object(managed, "resources", f"{field}.resources")),
    )


def managed_connection(namespace: str, managed: ManagedServer) -> PostgresEndpoint:
    """How workloads reach a managed server: its Service's cluster DNS name, as the superuser
    Secret's admin. The deployed image serves no TLS; CloudNativePG serves its own."""
    return PostgresEndpoint(
        host=f"{managed.service}.{namespace}.svc",
        port=managed.port,
        ssl_mode="require" if managed.engine == ENGINE_CNPG else "disable",
        admin_secret=managed.superuser_secret,
        connect_timeout=5,
    )


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
    bucket = _get(store, "container" if kind == "azure" else "bucket", "")
    _STORE_NAME_RULES[kind](bucket)
    prefix = check_prefix(f"{field}.prefix", _string(store, "prefix", f"{field}.prefix", ""))
    endpoint = _string(store, "endpoint", f"{field}.endpoint") or None
    if endpoint is not None:
        check_endpoint(f"{field}.endpoint", endpoint)
    credentials = _object(store, "credentialsSecretRef", f"{field}.credentialsSecretRef")
    secret_field = f"{field}.credentialsSecretRef"
    if kind == "s3":
        keys = (_string(credentials, "accessKeyIdKey", f"{secret_field}.accessKeyIdKey", "accessKeyId"),
                _string(credentials, "secretAccessKeyKey", f"{secret_field}.secretAccessKeyKey", "secretAccessKey"))
        key_fields = (f"{secret_field}.accessKeyIdKey", f"{secret_field}.secretAccessKeyKey")
    else:
        keys = (_string(credentials, "key", f"{secret_field}.key", _DEFAULT_KEYS[kind][0]),)
        key_fields = (f"{secret_field}.key",)
    credentials_secret = None
    if credentials:
        credentials_secret = _string(credentials, "name", f"{secret_field}.name")
        if not credentials_secret:
            raise SpecError(f"{secret_field}.name", "is required")
        check_object_name(f"{secret_field}.name", credentials_secret)
        for key_field, key in zip(key_fields, keys):
            check_secret_key(key_field, key)
    create_key = "createContainer" if kind == "azure" else "createBucket"
    create = _boolean(store, create_key, f"{field}.{create_key}", False)
    # Each store reads only its own settings; another store's would be pruned by the CRD.
    region = check_region(f"{field}.region", _string(store, "region", f"{field}.region", "us-east-1")) \
        if kind == "s3" else "us-east-1"
    project = _string(store, "project", f"{field}.project") if kind == "gcs" else None
    if project:
        check_gcs_project(f"{field}.project", project)
    account = _get(store, "storageAccount") if kind == "azure" else None
    if kind == "azure":
        validate_azure_account_name(account)
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


def _parse_server(server: Mapping[str, Any] | None, mlflow_version: str) -> TrackingServerSpec | None:
    if server is None or not _boolean(server, "enabled", "spec.server.enabled", True):
        return None

    def bounded(key: str, default: int, low: int, high: int) -> int:
        return _integer(server, key, f"spec.server.{key}", default, low, high)

    allowed_hosts = check_allowed_hosts("spec.server.allowedHosts", _get(server, "allowedHosts", []))
    service_account = _string(server, "serviceAccountName", "spec.server.serviceAccountName") or None
    if service_account is not None:
        check_object_name("spec.server.serviceAccountName", service_account)

    return TrackingServerSpec(
        enabled=True,
        replicas=bounded("replicas", 1, 0, 50),
        workers=bounded("workers", 2, 1, 32),
        image=check_image("spec.server.image",
                          _string(server, "image", "spec.server.image", f"ghcr.io/mlflow/mlflow:v{mlflow_version}")),
        port=bounded("port", 5000, 1024, 65535),
        serve_artifacts=_boolean(server, "serveArtifacts", "spec.server.serveArtifacts", True),
        service_account=service_account,
        allowed_hosts=allowed_hosts,
        resources=check_resources("spec.server.resources", _object(server, "resources", "spec.server.resources")),
        progress_deadline=bounded("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE, 10, 86400),
        job_execution=_boolean(server, "jobExecution", "spec.server.jobExecution", False),
    )
