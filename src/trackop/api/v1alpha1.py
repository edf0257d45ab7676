"""The ``TrackingBackend`` API, ``trackop.dev/v1alpha1``: its constants and typed spec (pure).

The dataclasses are what ``parsing.parse`` returns; the rest of trackop reads a backend
only through them. DESIGN.md is the contract they follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .names import connection_secret_name, migration_job_name
from .tuning import TuningSpec, parse_tuning

GROUP = "trackop.dev"

VERSION = "v1alpha1"

PLURAL = "trackingbackends"

KIND = "TrackingBackend"

DEFAULT_MLFLOW_VERSION = "3.17.2"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

BACKEND_LABEL = "trackop.dev/backend"

MANAGED_BY = "trackop"

# Injection (DESIGN.md): a pod opts in with the label and names its backend with the
# annotation; the webhook marks what it injected.
INJECT_LABEL = "trackop.dev/inject"
BACKEND_ANNOTATION = "trackop.dev/backend"
INJECTED_ANNOTATION = "trackop.dev/injected"
INIT_ANNOTATION = "trackop.dev/inject-init-containers"
# The label on every copy of a connection Secret: which backend's Secret it copies.
COPY_LABEL = "trackop.dev/copy-of"
# A namespace's opt-in to copies that hold secrets (Direct mode's database URI, bucket keys):
# without it, only the backend's own namespace gets them (docs/injection.md).
SECRET_COPIES_LABEL = "trackop.dev/secret-copies"
# Never injected, whatever a backend's selector says; the operator's own namespace is
# added at run time (it is a setting, not a constant).
NEVER_NAMESPACES = frozenset({"kube-system"})

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
# spec.server.progressDeadlineSeconds: Kubernetes' own default for a Deployment.
DEFAULT_PROGRESS_DEADLINE = 600

# PostgreSQL's own default, which trackop does not change on the servers it deploys: a
# max_connections at or below it leaves no slot for anyone but a superuser, and the
# server refuses to start at all.
SUPERUSER_RESERVED_CONNECTIONS = 3

# The backend's name is part of Service, Job and label values: a DNS-1035 label with room
# for the suffixes trackop adds ("-mlflow", "-migrate-<hash>").
MAX_BACKEND_NAME = 45

# A managed server's StatefulSet is "<name>-postgres"; the StatefulSet controller labels its
# pods with "<statefulset>-<10-character hash>", which must fit a 63-character label value.
MAX_MANAGED_BACKEND_NAME = 43

MANAGED_SUFFIX = "-postgres"


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
class PostgresEndpoint:
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
class TrackingServerSpec:
    enabled: bool
    replicas: int
    workers: int
    image: str
    port: int
    serve_artifacts: bool
    service_account: str | None
    allowed_hosts: tuple[str, ...]
    resources: Mapping[str, Any] | None
    # The Deployment's progressDeadlineSeconds: no progress for this long is a stuck rollout.
    progress_deadline: int = DEFAULT_PROGRESS_DEADLINE
    # MLflow's server-side jobs (MLFLOW_SERVER_ENABLE_JOB_EXECUTION): a job runner and seven
    # huey consumers of about 240 MiB each; off unless asked for.
    job_execution: bool = False


@dataclass(frozen=True)
class BackendSpec:
    namespace: str
    name: str
    postgres: PostgresEndpoint
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
    tracking_server: TrackingServerSpec | None = None  # None: no tracking server
    injection_mode: str = "Direct"
    # spec.injection.namespaceSelector: other namespaces whose pods may be injected.
    namespace_selector: Mapping[str, Any] | None = None
    # spec.postgres.managed: trackop deploys the server; ``postgres`` is then its Service.
    managed: ManagedServer | None = None

    @property
    def effective_tuning(self) -> TuningSpec:
        """``spec.postgres.tuning``, or its defaults (pool sizes) when none is given."""
        return self.tuning or parse_tuning(None)

    @property
    def tracking_server_name(self) -> str:
        """The tracking server's Deployment and Service."""
        return f"{self.name}-mlflow"

    @property
    def tracking_server_uri(self) -> str | None:
        if self.tracking_server is None:
            return None
        return f"http://{self.tracking_server_name}.{self.namespace}.svc:{self.tracking_server.port}"

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
