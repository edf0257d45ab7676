"""The operator's settings: one object, built once from the command line and the environment.

``trackop run`` builds a :class:`Settings` from its flags, falling back to the ``TRACKOP_*``
environment variables (the chart sets some of them), and hands it to the handlers through
kopf's memo. Nothing else in the package reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from .api.policy import Policy

MANAGED_ADDRESS_SERVICE = "service"
MANAGED_ADDRESS_POD = "pod"
MANAGED_ADDRESSES = (MANAGED_ADDRESS_SERVICE, MANAGED_ADDRESS_POD)
FAILURE_POLICIES = ("Ignore", "Fail")
LOG_FORMATS = ("plain", "full", "json")
DEFAULT_OPERATOR_NAMESPACE = "trackop-system"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """What one client may hold of the webhook server (``--webhook-*``; docs/injection.md, "Limits").

    The API server gives a webhook call ``timeoutSeconds`` (3) in all, so ``read_timeout``
    for each step is generous. ``max_body_bytes``: an AdmissionReview carries one Pod (CREATE
    only) or a small TrackingBackend; etcd stores at most 1.5 MiB an object and the API server
    reads at most 3 MiB of a request's body (twice that, for JSON that shrinks to protobuf), so
    any Pod that can be created fits in 3 MiB as JSON. Idle keep-alive connections are closed
    after ``keepalive_timeout``, longer than the API server's own idle timeout (Go's 90 s) so
    that it, not we, closes them: a connection closed just as it sends a request fails that
    admission."""

    read_timeout: float = 10.0  # each of: the TLS handshake, the request headers, the body
    keepalive_timeout: float = 120.0
    max_connections: int = 256
    max_body_bytes: int = 3 * MIB
    # Then the response says "Connection: close": a long-lived connection moves to another
    # replica now and then (a Service balances connections, not requests).
    keepalive_requests: int = 1000

    def check(self) -> None:
        for name in ("read_timeout", "keepalive_timeout", "max_connections", "max_body_bytes", "keepalive_requests"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"the webhook's {name.replace('_', ' ')} must be positive, not {value:g}")


@dataclass(frozen=True)
class WebhookSettings:
    """The admission webhooks (``--webhook-*``); ``address`` empty: none are served."""

    address: str = ""
    url: str = ""
    failure_policy: str = "Ignore"
    cert_secret: str = ""
    service: str = ""
    owner_cluster_role: str = ""
    # How often the serving certificate is checked, and how long before expiry it is renewed.
    rotation_check_seconds: float = 3600.0
    renew_before: dt.timedelta = dt.timedelta(days=30)
    limits: ServerLimits = field(default_factory=ServerLimits)


@dataclass(frozen=True)
class Settings:
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    # The drift timer; between two full reconciles a converged backend's check only compares
    # its fingerprint with a shared snapshot (0 makes every check a full reconcile).
    drift_interval: float = 60.0
    full_check_interval: float = 600.0
    # New Inline databases are cloned from a migrated template database; off migrates each
    # database in place (and preloads MLflow at startup).
    schema_templates: bool = True
    managed_postgres_address: str = MANAGED_ADDRESS_SERVICE
    metrics_address: str = ""
    peering_lifetime: float = 0.0  # 0: kopf's default
    verbose: bool = False
    log_format: str = "full"
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    # What tenants' backends may use (api.policy; docs/security.md); empty lists allow anything.
    allow_operator_cloud_identity: bool = False
    allowed_artifact_endpoints: tuple[str, ...] = ()
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    # `trackop run --namespace` (plain names, no patterns): the operator then reads and
    # writes Secrets only there (the chart's namespaced Roles); empty: every namespace.
    watch_namespaces: tuple[str, ...] = ()

    @property
    def secret_scope(self) -> frozenset[str] | None:
        return frozenset(self.watch_namespaces) if self.watch_namespaces else None

    @property
    def policy(self) -> Policy:
        return Policy(self.allow_operator_cloud_identity, self.allowed_artifact_endpoints,
                      self.allowed_images, self.allowed_service_accounts)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings the ``TRACKOP_*`` variables give (defaults for the rest)."""
        def number(name: str, default: float) -> float:
            raw = environ.get(name) or ""
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        drift = number("TRACKOP_DRIFT_INTERVAL", 60.0)
        webhook = WebhookSettings(
            address=environ.get("TRACKOP_WEBHOOK_ADDRESS", ""),
            url=environ.get("TRACKOP_WEBHOOK_URL", ""),
            failure_policy=environ.get("TRACKOP_WEBHOOK_FAILURE_POLICY") or "Ignore",
            cert_secret=environ.get("TRACKOP_WEBHOOK_CERT_SECRET", ""),
            service=environ.get("TRACKOP_WEBHOOK_SERVICE", ""),
            owner_cluster_role=environ.get("TRACKOP_WEBHOOK_OWNER_CLUSTERROLE", ""),
            rotation_check_seconds=number("TRACKOP_WEBHOOK_ROTATION_CHECK", 3600.0),
            renew_before=dt.timedelta(days=number("TRACKOP_WEBHOOK_RENEW_BEFORE_DAYS", 30.0)),
            limits=ServerLimits(
                read_timeout=number("TRACKOP_WEBHOOK_READ_TIMEOUT", ServerLimits.read_timeout),
                keepalive_timeout=number("TRACKOP_WEBHOOK_KEEPALIVE_TIMEOUT", ServerLimits.keepalive_timeout),
                max_connections=int(number("TRACKOP_WEBHOOK_MAX_CONNECTIONS", ServerLimits.max_connections)),
                max_body_bytes=int(number("TRACKOP_WEBHOOK_MAX_BODY_BYTES", ServerLimits.max_body_bytes)),
            ),
        )
        settings = cls(
            operator_namespace=environ.get("TRACKOP_NAMESPACE") or DEFAULT_OPERATOR_NAMESPACE,
            drift_interval=drift,
            full_check_interval=number("TRACKOP_FULL_CHECK_INTERVAL", 10 * drift),
            schema_templates=environ.get("TRACKOP_SCHEMA_TEMPLATES", "on").lower() != "off",
            managed_postgres_address=environ.get("TRACKOP_MANAGED_POSTGRES_ADDRESS") or MANAGED_ADDRESS_SERVICE,
            metrics_address=environ.get("TRACKOP_METRICS_ADDRESS", ""),
            peering_lifetime=number("TRACKOP_PEERING_LIFETIME", 0.0),
            verbose=bool(environ.get("TRACKOP_VERBOSE")),
            log_format=environ.get("TRACKOP_LOG_FORMAT") or "full",
            webhook=webhook,
            allow_operator_cloud_identity=_switch(environ, "TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY"),
            allowed_artifact_endpoints=_patterns(environ, "TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS"),
            allowed_images=_patterns(environ, "TRACKOP_ALLOWED_IMAGES"),
            allowed_service_accounts=_patterns(environ, "TRACKOP_ALLOWED_SERVICE_ACCOUNTS"),
        )
        settings.check()
        return settings

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` (webhook fields as ``webhook_<name>``), checked."""
        webhook_changes = {key.removeprefix("webhook_"): value for key, value in changes.items()
                           if key.startswith("webhook_")}
        own = {key: value for key, value in changes.items() if not key.startswith("webhook_")}
        updated = dataclasses.replace(self, **own, webhook=dataclasses.replace(self.webhook, **webhook_changes))
        updated.check()
        return updated

    def check(self) -> None:
        """Refuse values the operator cannot run with, naming the setting."""
        if self.drift_interval <= 0:
            raise ValueError(f"the drift interval must be positive, not {self.drift_interval:g}")
        if self.full_check_interval < 0:
            raise ValueError(f"the full-check interval must be 0 or more, not {self.full_check_interval:g}")
        if self.managed_postgres_address not in MANAGED_ADDRESSES:
            raise ValueError(f"the managed PostgreSQL address must be one of {', '.join(MANAGED_ADDRESSES)}, "
                             f"not {self.managed_postgres_address!r}")
        if self.webhook.failure_policy not in FAILURE_POLICIES:
            raise ValueError(f"the webhook failure policy must be Ignore or Fail, not {self.webhook.failure_policy!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"the log format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.webhook.rotation_check_seconds <= 0:
            raise ValueError("the webhook certificate's rotation check interval must be positive")
        self.webhook.limits.check()
        _check_patterns(self)


def _switch(environ: Mapping[str, str], name: str) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if raw in ("", "false", "0", "no", "off"):
        return False
    if raw in ("true", "1", "yes", "on"):
        return True
    raise ValueError(f"{name}={raw!r} is not true or false")


def _patterns(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list (the chart joins its lists so)."""
    return tuple(part.strip() for part in (environ.get(name) or "").split(",") if part.strip())


def _check_patterns(settings: Settings) -> None:
    lists = {"allowed artifact endpoint": settings.allowed_artifact_endpoints,
             "allowed image": settings.allowed_images,
             "allowed ServiceAccount": settings.allowed_service_accounts}
    for what, patterns in lists.items():
        for pattern in patterns:
            if not pattern.strip() or "," in pattern:
                raise ValueError(f"an {what} pattern must be non-empty and hold no comma, not {pattern!r}")
    for pattern in settings.allowed_artifact_endpoints:
        if "/" in pattern or ":" in pattern:
            # Host patterns only: a scheme or a port would never match a host name.
            raise ValueError(f"an allowed artifact endpoint is a host name pattern (e.g. *.amazonaws.com, "
                             f"minio.minio.svc), without scheme, port or path, not {pattern!r}")
