"""The reconcile of one TrackingBackend: its steps in order, and what it hands back.

Check-first at every step: a converged backend costs one short round of reads. The
sequence: the managed server (if any), the Secrets (admin, bucket, connection, copies),
role and database, tuning and the connection budget, the schema, the bucket, the
tracking server. A step that cannot complete raises StepFailed; the steps after it are
reported Waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..api import conditions as cond
from ..api import v1alpha1
from ..api.conditions import Condition
from ..api.policy import Policy
from ..api.v1alpha1 import BackendSpec
from ..kube.client import Kube
from ..postgres import catalog, errors, sessions, snapshot
from ..redaction import redact
from ..settings import MANAGED_ADDRESS_SERVICE, Settings
from . import fingerprint
from .copies import SecretCopies
from .drift import DriftChecker
from .listing import SharedListing
from .outcome import Context, Outcome, StepFailed, unexpected_failure
from .retry import api_trouble
from .steps import (
    artifacts,
    connection_secret,
    credentials,
    database,
    deletion,
    managed_server,
    template,
    tracking_server,
)
from .steps import schema as schema_step
from .steps import tuning as tuning_step

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, kube: Kube, operator_namespace: str | None = None,
                 managed_address: str = MANAGED_ADDRESS_SERVICE, shared_list_ttl: float = 0,
                 full_check_interval: float = 0, schema_templates: bool = True,
                 policy: Policy = Policy(), secret_scope: frozenset[str] | None = None) -> None:
        self.kube = kube
        # What tenants' backends may use (images, ServiceAccount, endpoints, the operator's identity).
        self.policy = policy
        # The namespaces' labels (which namespaces get Secret copies) and the opted-in pods
        # (missed injections): one LIST each per ``shared_list_ttl`` for all backends, not one
        # per backend per drift check. The operator invalidates the namespaces on every
        # namespace event, so a new, relabelled or terminating namespace is seen at once.
        self.namespaces = SharedListing(lambda: self.kube.namespace_labels(), shared_list_ttl)
        opted_in_pods = SharedListing(lambda: self.kube.pods_by_label(f"{v1alpha1.INJECT_LABEL}=true"),
                                      shared_list_ttl)
        self.copies = SecretCopies(kube, self.namespaces, opted_in_pods, operator_namespace, secret_scope)
        # How the operator reaches the servers it deploys: their Service's DNS name (in the
        # cluster), or their pod's IP (an operator outside the cluster's Service network).
        self.managed_address = managed_address
        self.schema_templates = schema_templates
        # The drift timer's fingerprints (drift.py); a full_check_interval of 0 keeps none,
        # and every drift check is a full reconcile.
        self.drift = DriftChecker(kube, self.namespaces, ttl=shared_list_ttl / 2,
                                  full_interval=full_check_interval, secret_scope=secret_scope)

    @classmethod
    def from_settings(cls, kube: Kube, settings: Settings) -> Reconciler:
        # The drift checks of all backends share one LIST of namespaces and one of opted-in
        # pods per interval.
        return cls(kube, settings.operator_namespace, settings.managed_postgres_address,
                   shared_list_ttl=settings.drift_interval, full_check_interval=settings.full_check_interval,
                   schema_templates=settings.schema_templates, policy=settings.policy,
                   secret_scope=settings.secret_scope)

    def reconcile(self, spec: BackendSpec, owner: Mapping[str, Any], previous_status: Mapping[str, Any]) -> Outcome:
        ctx = Context(spec, owner, previous_status or {})
        self.drift.forget(spec.namespace, spec.name)  # recorded again below if this one ends Ready
        done: list[Condition] = []
        step_type = cond.DATABASE_READY
        try:
            if spec.managed is not None:
                step_type = cond.POSTGRES_READY
                done.append(managed_server.ensure(ctx, self.kube, self.managed_address))
                step_type = cond.DATABASE_READY
            admin_user, admin_password = credentials.admin_credentials(ctx, self.kube)
            bucket_keys, bucket_problem = credentials.bucket_keys(ctx, self.kube)
            password, secret_data = connection_secret.password(ctx, self.kube, bucket_keys)
            self.copies.sync(spec, secret_data, ctx.did)
            with sessions.admin_session(ctx.reach, admin_user, admin_password) as admin:
                privileges = catalog.admin_privileges(admin)
                catalog.check_admin(privileges, admin_user)
                login = database.ensure(ctx, admin, privileges, password,
                                        clones=template.clones(spec, self.schema_templates))
                done.append(Condition(cond.DATABASE_READY, "True", "Provisioned",
                                      f"database {spec.database} owned by role {spec.role} on "
                                      f"{spec.postgres.host}:{spec.postgres.port}"))
                step_type = cond.TUNING_APPLIED
                tuning_conditions, budget = tuning_step.ensure(ctx, admin, privileges)
                done.extend(tuning_conditions)
                # The catalog rows the drift timer's fingerprint starts from (drift.py).
                observed = snapshot.observe_server(admin, privileges.superuser, [spec.role, admin_user],
                                                   [spec.database]) \
                    if self.drift.enabled and fingerprint.eligible(spec) else None
            step_type = cond.SCHEMA_READY
            revision, message = schema_step.ensure(ctx, self.kube, password, login.revision, self.policy)
            done.append(Condition(cond.SCHEMA_READY, "True", "AtHead", message))
            if spec.artifacts is not None:
                step_type = cond.ARTIFACTS_READY
                if bucket_problem is not None:
                    raise bucket_problem
                done.append(artifacts.ensure(ctx, password, bucket_keys, self.policy))
            if spec.tracking_server is not None:
                step_type = cond.SERVER_READY
                done.append(tracking_server.ensure(ctx, self.kube, self.policy))
            status = status_fields(spec, revision)
            status["connectionBudget"] = budget
            done.append(Condition(cond.READY, "True", "Ready", "the MLflow backend store is ready to use"))
            if observed is not None:
                self.drift.record(spec, owner["metadata"].get("generation"), ctx.reach, ctx.admin_login, observed)
            return Outcome(done, status, ctx.events, None)
        except StepFailed as failure:
            return failed(ctx, done, failure)
        except errors.PostgresError as error:
            return failed(ctx, done, StepFailed(step_type, error.reason, error.message, 15))
        except sessions.SessionBroken as exc:
            # A session lost mid-step (a PostgreSQL restart): a condition and our backoff,
            # not an unexpected exception that kopf retries only after a minute.
            error = sessions.connection_lost(exc, ctx.reach)
            return failed(ctx, done, StepFailed(step_type, error.reason, error.message, 15))
        except Exception as exc:
            if api_trouble(exc) is not None:
                raise  # the API server is the trouble: no status can be written; the handler retries soon
            failure = unexpected_failure(step_type, exc)
            log.warning("%s/%s: %s", spec.namespace, spec.name, redact(failure.message, ctx.secrets))
            return failed(ctx, done, failure)

    def delete(self, spec: BackendSpec, owner: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Apply the deletion policy; raises StepFailed if it must be retried."""
        self.copies.remove(spec)
        return deletion.delete(spec, owner, self.kube)


def failed(ctx: Context, done: list[Condition], failure: StepFailed) -> Outcome:
    """The outcome of a reconcile stopped by ``failure``: the steps after it Waiting."""
    message = redact(failure.message, ctx.secrets)
    failed_condition = Condition(failure.condition_type, "False", failure.reason, message)
    waiting = [
        Condition(t, "Unknown", "Waiting", f"waiting for {failure.condition_type}")
        for t in condition_types(ctx.spec)
        if t != failure.condition_type and t not in {c.type for c in done}
    ]
    ready = Condition(cond.READY, "False", failure.reason, message)
    events = [(t, r, redact(m, ctx.secrets)) for t, r, m in ctx.events]
    # One Warning per new cause, not one per retry; progress is not a warning until it is stuck.
    previous_reason = cond.reason_of(ctx.previous_status.get("conditions"), cond.READY)
    if previous_reason != failure.reason and failure.warn:
        events.append(("Warning", failure.reason, message))
    status = status_fields(ctx.spec, (ctx.previous_status.get("schema") or {}).get("revision"))
    return Outcome([*done, failed_condition, *waiting, ready], status, events, failure.retry_after, failure.backoff)


def condition_types(spec: BackendSpec) -> list[str]:
    """The conditions a backend of this spec reports, in the order of its steps."""
    types = [cond.POSTGRES_READY] if spec.managed is not None else []
    types.append(cond.DATABASE_READY)
    if spec.tuning is not None:
        types.append(cond.TUNING_APPLIED)
    types += [cond.CONNECTION_BUDGET, cond.SCHEMA_READY]
    if spec.artifacts is not None:
        types.append(cond.ARTIFACTS_READY)
    if spec.tracking_server is not None:
        types.append(cond.SERVER_READY)
    return types


def status_fields(spec: BackendSpec, revision: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "database": {"host": spec.postgres.host, "port": spec.postgres.port,
                     "name": spec.database, "role": spec.role},
        "connectionSecret": spec.connection_secret,
    }
    if revision:
        status["schema"] = {"mlflowVersion": spec.mlflow_version, "revision": revision}
    # Only the server's http URI: a Direct-mode URI carries the password.
    status["trackingUri"] = spec.tracking_server_uri if spec.injection_mode == "Server" else None
    return status
