"""The ordered steps that turn a TrackingBackend into a ready database, and their conditions.

Each step checks what exists before it changes anything, so running the whole sequence
again (a re-apply, an operator restart, the drift timer) is cheap and changes nothing
on a converged backend. A step that fails stops the sequence with a condition whose
reason names the cause and whose message says the fix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets as random_secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from kubernetes.client import ApiException

from . import drift, injection, managed, manifests, postgres
from .api import conditions as cond
from .api import connections, tuning
from .api.conditions import Condition
from .api.v1alpha1 import BACKEND_LABEL, ENGINE_CNPG, MANAGED_BY, MANAGED_BY_LABEL, BackendSpec, PostgresEndpoint
from .artifacts.check import check_store
from .artifacts.common import ArtifactsError
from .drift import SharedListing
from .injection import COPY_LABEL, copy_label_value
from .kube import Kube
from .redaction import redact
from .schema import child, migration, revisions
from .schema.errors import SchemaMigrationError, SchemaNewerThanTarget

log = logging.getLogger(__name__)


def _refusal(exc: ApiException) -> str:
    """The API server's own message for a refused object (its body is a Status)."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"

GENERATED_PASSWORD_BYTES = 32  # token_urlsafe(32): 43 characters
# New Inline databases are cloned from a template database (postgres.py); "off" migrates
# each one in place, as before.
SCHEMA_TEMPLATES = os.environ.get("TRACKOP_SCHEMA_TEMPLATES", "on").lower() != "off"
TEMPLATE_LOCK_TIMEOUT = 60.0  # seconds to wait for another session's template build
CLONE_ATTEMPTS = 3


def _ours(spec: BackendSpec, body: Mapping[str, Any]) -> bool:
    """Made by trackop for a backend of this name (this one, or one before it that was retained)."""
    found = (body.get("metadata") or {}).get("labels") or {}
    return found.get(MANAGED_BY_LABEL) == MANAGED_BY and found.get(BACKEND_LABEL) == spec.name


def _container_args(statefulset: Mapping[str, Any]) -> list[str]:
    containers = (((statefulset.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return list(containers[0].get("args") or []) if containers else []


class StepFailed(Exception):
    """A step could not complete; carries the condition that says why."""

    def __init__(self, condition_type: str, reason: str, message: str, retry_after: float = 10,
                 backoff: bool = True) -> None:
        super().__init__(message)
        self.condition_type = condition_type
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # Progress (a Job running, a rollout) is polled at a steady pace, not backed off.
        self.backoff = backoff


@dataclass
class Outcome:
    """What a reconcile found and did; the operator turns it into status and Events."""

    conditions: list[Condition]
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    retry_after: float | None = None  # None: converged
    backoff: bool = True

    @property
    def ready(self) -> bool:
        return any(c.type == cond.READY and c.status == "True" for c in self.conditions)


@dataclass
class _Context:
    spec: BackendSpec
    owner: Mapping[str, Any]
    previous_status: Mapping[str, Any]
    secrets: set[str] = field(default_factory=set)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    # Where the operator itself connects: spec.postgres, or a managed server's pod address
    # when the operator runs outside the cluster's Service network.
    reach: PostgresEndpoint | None = None
    admin_login: tuple[str, str] | None = None   # (user, password) from the admin Secret
    cloned: tuple[str, float] | None = None      # (template, seconds) when this reconcile cloned the database
    not_cloned: str | None = None                # why a new database was not cloned (then migrated in place)

    def __post_init__(self) -> None:
        if self.reach is None:
            self.reach = self.spec.postgres

    def did(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))




def injection_view(spec: BackendSpec, secret_keys: Iterable[str]) -> injection.BackendView:
    return injection.BackendView(spec.namespace, spec.name, spec.injection_mode, spec.namespace_selector,
                                 tuple(sorted(secret_keys)))


MANAGED_ADDRESS_SERVICE = "service"
MANAGED_ADDRESS_POD = "pod"


class Reconciler:
    def __init__(self, kube: Kube, operator_namespace: str | None = None,
                 managed_address: str = MANAGED_ADDRESS_SERVICE, shared_list_ttl: float = 0,
                 full_check_interval: float = 0) -> None:
        self.kube = kube
        # The namespaces' labels (which namespaces get Secret copies) and the opted-in pods
        # (missed injections): one LIST each per ``shared_list_ttl`` for all backends, not one
        # per backend per drift check. The operator invalidates the namespaces on every
        # namespace event, so a new, relabelled or terminating namespace is seen at once.
        self.namespaces = SharedListing(lambda: self.kube.namespace_labels(), shared_list_ttl)
        self.opted_in_pods = SharedListing(lambda: self.kube.pods_by_label(f"{injection.INJECT_LABEL}=true"),
                                           shared_list_ttl)
        self.operator_namespace = operator_namespace
        # How the operator reaches the servers it deploys: their Service's DNS name (in the
        # cluster), or their pod's IP (an operator outside the cluster's Service network).
        self.managed_address = managed_address
        self._reported_pods: set[str] = set()  # uids already reported as missing injection
        # The drift timer's fingerprints (drift.py); a full_check_interval of 0 keeps none,
        # and every drift check is a full reconcile.
        self.drift = drift.DriftChecker(kube, self.namespaces, ttl=shared_list_ttl / 2,
                                        full_interval=full_check_interval)

    # ---- the sequence ----------------------------------------------------------------
    def reconcile(self, spec: BackendSpec, owner: Mapping[str, Any], previous_status: Mapping[str, Any]) -> Outcome:
        ctx = _Context(spec, owner, previous_status or {})
        self.drift.forget(spec.namespace, spec.name)  # recorded again below if this one ends Ready
        done: list[Condition] = []
        step_type = cond.DATABASE_READY
        try:
            if spec.managed is not None:
                step_type = cond.POSTGRES_READY
                done.append(self._managed_server(ctx))
                step_type = cond.DATABASE_READY
            admin_user, admin_password = self._admin_credentials(ctx)
            bucket_keys, bucket_problem = self._bucket_keys(ctx)
            password, secret_data = self._password(ctx, bucket_keys)
            self.sync_copies(spec, secret_data, ctx.did)
            with postgres.admin_session(ctx.reach, admin_user, admin_password) as admin:
                privileges = postgres.admin_privileges(admin)
                postgres.check_admin(privileges, admin_user)
                login = self._database_and_role(ctx, admin, privileges, password)
                done.append(Condition(cond.DATABASE_READY, "True", "Provisioned",
                                      f"database {spec.database} owned by role {spec.role} on "
                                      f"{spec.postgres.host}:{spec.postgres.port}"))
                step_type = cond.TUNING_APPLIED
                tuning_conditions, budget = self._tuning(ctx, admin, privileges)
                done.extend(tuning_conditions)
                # The catalog rows the drift timer's fingerprint starts from (drift.py).
                observed = postgres.observe_server(admin, privileges.superuser, [spec.role, admin_user],
                                                   [spec.database]) \
                    if self.drift.enabled and drift.eligible(spec) else None
            step_type = cond.SCHEMA_READY
            revision, message = self._schema(ctx, password, login.revision)
            done.append(Condition(cond.SCHEMA_READY, "True", "AtHead", message))
            if spec.artifacts is not None:
                step_type = cond.ARTIFACTS_READY
                if bucket_problem is not None:
                    raise bucket_problem
                done.append(self._artifacts(ctx, password, bucket_keys))
            if spec.tracking_server is not None:
                step_type = cond.SERVER_READY
                done.append(self._tracking_server(ctx))
            status = self._status_fields(spec, revision)
            status["connectionBudget"] = budget
            done.append(Condition(cond.READY, "True", "Ready", "the MLflow backend store is ready to use"))
            if observed is not None:
                self.drift.record(spec, owner["metadata"].get("generation"), ctx.reach, ctx.admin_login, observed)
            return Outcome(done, status, ctx.events, None)
        except StepFailed as failure:
            return self._failed(ctx, done, failure)
        except postgres.PostgresError as error:
            return self._failed(ctx, done, StepFailed(step_type, error.reason, error.message, 15))
        except psycopg.OperationalError as exc:
            # A session lost mid-step (a PostgreSQL restart): a condition and our backoff,
            # not an unexpected exception that kopf retries only after a minute.
            error = postgres.connection_lost(exc, ctx.reach)
            return self._failed(ctx, done, StepFailed(step_type, error.reason, error.message, 15))

    def _failed(self, ctx: _Context, done: list[Condition], failure: StepFailed) -> Outcome:
        message = redact(failure.message, ctx.secrets)
        failed = Condition(failure.condition_type, "False", failure.reason, message)
        waiting = [
            Condition(t, "Unknown", "Waiting", f"waiting for {failure.condition_type}")
            for t in self._condition_types(ctx.spec)
            if t != failure.condition_type and t not in {c.type for c in done}
        ]
        ready = Condition(cond.READY, "False", failure.reason, message)
        events = [(t, r, redact(m, ctx.secrets)) for t, r, m in ctx.events]
        # One Warning per new cause, not one per retry; progress is not a warning.
        previous_reason = cond.reason_of(ctx.previous_status.get("conditions"), cond.READY)
        if previous_reason != failure.reason and failure.backoff:
            events.append(("Warning", failure.reason, message))
        status = self._status_fields(ctx.spec, (ctx.previous_status.get("schema") or {}).get("revision"))
        return Outcome([*done, failed, *waiting, ready], status, events, failure.retry_after, failure.backoff)

    @staticmethod
    def _condition_types(spec: BackendSpec) -> list[str]:
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

    @staticmethod
    def _status_fields(spec: BackendSpec, revision: str | None) -> dict[str, Any]:
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

    # ---- steps -----------------------------------------------------------------------
    def _admin_credentials(self, ctx: _Context) -> tuple[str, str]:
        spec = ctx.spec
        ref = f"{spec.namespace}/{spec.postgres.admin_secret}"
        data = self.kube.read_secret(spec.namespace, spec.postgres.admin_secret)
        if data is None:
            if spec.managed is not None:
                maker = "CloudNativePG" if spec.managed.engine == ENGINE_CNPG else "trackop"
                raise StepFailed(cond.DATABASE_READY, "AdminSecretMissing",
                                 f"the managed server's superuser Secret {ref} (made by {maker}) is gone: restore "
                                 "it, or delete the server's volume to start afresh", 15)
            raise StepFailed(cond.DATABASE_READY, "AdminSecretMissing",
                             f"admin Secret {ref} not found: create it with keys username and password "
                             "(spec.postgres.external.adminSecretRef)", 15)
        missing = [k for k in ("username", "password") if not data.get(k)]
        if missing:
            raise StepFailed(cond.DATABASE_READY, "AdminSecretInvalid",
                             f"admin Secret {ref} lacks key(s) {', '.join(missing)}: add them", 15)
        ctx.secrets.add(data["password"])
        ctx.admin_login = (data["username"], data["password"])
        return data["username"], data["password"]

    # ---- spec.postgres.managed ----------------------------------------------------------
    def _managed_server(self, ctx: _Context) -> Condition:
        """Deploy (or keep) the backend's own server and wait until it is ready; then point
        ``ctx.reach`` at it. Everything after this is the external-server path."""
        spec = ctx.spec
        server = spec.managed
        settings = managed.parameters(spec)
        shortfall = managed.budget_shortfall(spec, settings)
        if shortfall is not None:
            # Checked before the server is restarted with fewer connections than the stack needs.
            raise StepFailed(cond.TUNING_APPLIED, "MaxConnectionsTooLow", shortfall.message, 300)
        try:
            if server.engine == ENGINE_CNPG:
                progress = self._cnpg_cluster(ctx, settings)
            else:
                progress = self._statefulset(ctx, settings)
        except ApiException as exc:
            if exc.status is None or exc.status >= 500 or exc.status in (401, 403, 409):
                raise  # API trouble: the operator retries soon
            raise StepFailed(cond.POSTGRES_READY, "ManagedServerRejected",
                             f"the API server refused the managed PostgreSQL's objects {server.name}: "
                             f"{_refusal(exc)}; check spec.postgres.managed (image, storage, resources)",
                             30) from None
        if not progress.ready:
            raise StepFailed(cond.POSTGRES_READY, progress.reason, progress.message, 3, backoff=False)
        ctx.reach = self._managed_reach(spec)
        return Condition(cond.POSTGRES_READY, "True", progress.reason, progress.message)

    def _statefulset(self, ctx: _Context, settings: Mapping[str, str]) -> managed.Progress:
        spec = ctx.spec
        name = spec.managed.name
        self._superuser_secret(ctx)
        before, _ = self._apply_owned(spec, managed.service(spec, ctx.owner))
        if before is None:
            ctx.did("PostgresDeployed", f"created Service {spec.managed.service}")
        before, after = self._apply_owned(spec, managed.statefulset(spec, ctx.owner, settings))
        if before is None:
            ctx.did("PostgresDeployed", f"created StatefulSet {name} running {spec.managed.image}")
        else:
            old = managed.parameters_from_args(_container_args(before))
            new = managed.parameters_from_args(_container_args(after))
            changed = {k: v for k, v in new.items() if old.get(k) != v}
            removed = sorted(set(old) - set(new))
            if changed or removed:
                shown = ", ".join([f"{k}={v}" for k, v in sorted(changed.items())] + [f"{k} reset" for k in removed])
                ctx.did("PostgresRestarting", f"restarting PostgreSQL ({name}) to apply {shown}")
        return managed.statefulset_progress(spec, after)

    def _apply_owned(self, spec: BackendSpec, wanted: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Server-side apply one of a managed server's objects: (before, or None if new; after).
        One of that name that trackop did not make for this backend is never taken over."""
        before = self.kube.read_object(wanted)
        if before is not None and not _ours(spec, before):
            kind, name = wanted["kind"], wanted["metadata"]["name"]
            raise StepFailed(cond.POSTGRES_READY, "ManagedServerNameTaken",
                             f"{kind} {name} exists and was not made by trackop for this backend: rename the "
                             f"TrackingBackend or remove that {kind}; trackop never takes over what it did not make",
                             60)
        return before, self.kube.apply_object(wanted)

    def _superuser_secret(self, ctx: _Context) -> None:
        """The StatefulSet engine's superuser Secret: generated once, adopted when an earlier
        backend of this name left it behind (deletionPolicy Retain kept its data too)."""
        spec = ctx.spec
        name = spec.managed.superuser_secret
        found = self.kube.read_secret_and_owners(spec.namespace, name)
        if found is None:
            password = random_secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
            ctx.secrets.add(password)
            try:
                self.kube.create_secret(managed.superuser_secret(spec, password, ctx.owner))
                ctx.did("SuperuserSecretCreated", f"created Secret {name} for the managed server's superuser")
            except ApiException as exc:
                if exc.status != 409:
                    raise  # 409: a concurrent reconcile made it; its password is the one
            return
        data, owners = found
        if not data.get("username") or not data.get("password"):
            raise StepFailed(cond.POSTGRES_READY, "SuperuserSecretInvalid",
                             f"Secret {spec.namespace}/{name} lacks username or password: restore them (the server "
                             "was initialised with them) or delete the Secret and the volume to start afresh", 60)
        ctx.secrets.add(data["password"])
        if ctx.owner["metadata"]["uid"] not in owners:
            body = managed.superuser_secret(spec, data["password"], ctx.owner)
            body["stringData"]["username"] = data["username"]
            self.kube.update_secret(body)
            ctx.did("SuperuserSecretAdopted", f"adopted Secret {name} kept from an earlier backend of this name")

    def _cnpg_cluster(self, ctx: _Context, settings: Mapping[str, str]) -> managed.Progress:
        spec = ctx.spec
        name = spec.managed.name
        try:
            before, after = self._apply_owned(spec, managed.cnpg_cluster(spec, ctx.owner, settings))
        except ApiException as exc:
            if exc.status != 404:
                raise
            raise StepFailed(cond.POSTGRES_READY, "CloudNativePGNotInstalled",
                             f"engine CloudNativePG needs CloudNativePG's CRDs ({managed.CNPG_CRD}), which this "
                             "cluster does not have: install the CloudNativePG operator, or use engine StatefulSet",
                             15) from None
        if before is None:
            ctx.did("PostgresDeployed", f"created CloudNativePG Cluster {name} ({spec.managed.instances} "
                                        f"instance(s), {spec.managed.image})")
        elif (before.get("spec") or {}).get("postgresql", {}).get("parameters") != \
                (after.get("spec") or {}).get("postgresql", {}).get("parameters"):
            ctx.did("PostgresRestarting", f"updated the parameters of CloudNativePG Cluster {name}; CloudNativePG "
                                          "restarts the instances if a parameter needs it")
        return managed.cluster_progress(spec, after)

    def _managed_reach(self, spec: BackendSpec) -> PostgresEndpoint:
        if self.managed_address != MANAGED_ADDRESS_POD:
            return spec.postgres
        selector = managed.primary_pod_selector(spec)
        ip = self.kube.pod_ip(spec.namespace, name=None if selector else managed.pod_name(spec), selector=selector)
        if not ip:
            raise StepFailed(cond.POSTGRES_READY, "Starting",
                             f"the managed PostgreSQL {spec.managed.name} has no ready pod with an IP yet", 3,
                             backoff=False)
        return dataclasses.replace(spec.postgres, host=ip)

    def _bucket_keys(self, ctx: _Context) -> tuple[tuple[str, ...] | None, StepFailed | None]:
        """The artifact store's credentials from the user's Secret, in ``credential_keys``
        order; a problem is reported at the artifacts step, so a missing Secret does not
        hold the database back."""
        store = ctx.spec.artifacts
        if store is None or store.credentials_secret is None:
            return None, None
        ref = f"{ctx.spec.namespace}/{store.credentials_secret}"
        data = self.kube.read_secret(ctx.spec.namespace, store.credentials_secret)
        if data is None:
            return None, StepFailed(cond.ARTIFACTS_READY, "BucketSecretMissing",
                                    f"Secret {ref} ({store.field}.credentialsSecretRef) not found: create it "
                                    f"with key(s) {', '.join(store.credential_keys)}", 15)
        missing = [k for k in store.credential_keys if not data.get(k)]
        if missing:
            return None, StepFailed(cond.ARTIFACTS_READY, "BucketSecretInvalid",
                                    f"Secret {ref} lacks key(s) {', '.join(missing)}: add them", 15)
        values = tuple(data[k] for k in store.credential_keys)
        ctx.secrets.update(values)
        return values, None

    def _password(self, ctx: _Context, bucket_keys: tuple[str, ...] | None,
                  lost_race: bool = False) -> tuple[str, dict[str, str]]:
        """The role's password: the user's Secret, else the one already issued, else a new one.

        The connection Secret is written before the role gets the password, so a crash in
        between never leaves a password that exists only in PostgreSQL.
        """
        spec = ctx.spec
        found = self.kube.read_secret_and_owners(spec.namespace, spec.connection_secret)
        existing, owners = found if found else (None, set())
        if spec.password_secret is not None:
            ref = spec.password_secret
            data = self.kube.read_secret(spec.namespace, ref.name)
            if data is None or not data.get(ref.key):
                raise StepFailed(cond.DATABASE_READY, "PasswordSecretMissing",
                                 f"Secret {spec.namespace}/{ref.name} with key {ref.key!r} not found "
                                 "(spec.postgres.passwordSecretRef): create it or remove the reference", 15)
            password = data[ref.key]
        elif existing and existing.get("PGPASSWORD"):
            password = existing["PGPASSWORD"]
        else:
            password = random_secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
        ctx.secrets.add(password)
        body = manifests.connection_secret(spec, password, ctx.owner, bucket_keys)
        if existing is None:
            try:
                self.kube.create_secret(body)
            except ApiException as exc:
                if exc.status != 409 or lost_race:
                    raise
                # Another reconcile of this backend (the drift timer runs beside the handler)
                # created it between our read and our create: its password is the one.
                return self._password(ctx, bucket_keys, lost_race=True)
            ctx.did("ConnectionSecretCreated", f"created Secret {spec.connection_secret}")
        elif any(existing.get(k) != v for k, v in body["stringData"].items()) or ctx.owner["metadata"]["uid"] not in owners:
            # Changed keys, or a Secret retained from an earlier backend of this name: adopt it.
            self.kube.update_secret(body)
            ctx.did("ConnectionSecretUpdated", f"updated Secret {spec.connection_secret}")
        return password, body["stringData"]

    # ---- injection ---------------------------------------------------------------------
    def sync_copies(self, spec: BackendSpec, data: Mapping[str, str],
                    did: Callable[[str, str], None] = lambda reason, message: None) -> None:
        """Keep a copy of the connection Secret, with only the keys the mode needs, in every
        namespace whose pods may be injected; remove copies where they no longer may."""
        view = injection_view(spec, data)
        name = injection.copy_secret_name(spec.namespace, spec.name)
        label = copy_label_value(spec.namespace, spec.name)
        existing = self.kube.secrets_by_label(f"{COPY_LABEL}={label}")
        wanted = {ns for ns, labels in self.namespaces.get().items()
                  if injection.admits_namespace(spec.namespace, spec.namespace_selector, ns, labels,
                                                self.operator_namespace)}
        copy = injection.copy_secret_data(view, data)
        for namespace in sorted(wanted):
            if existing.get((namespace, name)) == copy:
                continue
            self.kube.put_secret({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {**manifests.labels(spec, "injection"), COPY_LABEL: label},
                             "annotations": {"trackop.dev/copy-of": f"{spec.namespace}/{spec.connection_secret}"}},
                "stringData": copy,
            })
            did("SecretCopied", f"copied the {spec.injection_mode}-mode keys of Secret {spec.connection_secret} "
                                f"to {namespace}/{name}")
        for namespace, secret in existing:
            if namespace not in wanted:
                self.kube.delete_secret(namespace, secret)
                did("SecretCopyRemoved", f"removed {namespace}/{secret}: the namespace is no longer admitted")

    def remove_copies(self, spec: BackendSpec) -> None:
        for namespace, secret in self.kube.secrets_by_label(f"{COPY_LABEL}={copy_label_value(spec.namespace, spec.name)}"):
            self.kube.delete_secret(namespace, secret)

    def missed_injections(self, spec: BackendSpec) -> list[tuple[str, str, str]]:
        """Warnings for pods that opted in to this backend but were created without
        injection (the webhook was down with failurePolicy Ignore); each pod once."""
        events = []
        for pod in self.opted_in_pods.get():
            meta = pod.metadata
            reference = injection.parse_backend_reference(
                (meta.annotations or {}).get(injection.BACKEND_ANNOTATION), meta.namespace)
            if reference != (spec.namespace, spec.name) or meta.uid in self._reported_pods:
                continue
            if injection.missed_injection({"metadata": {"labels": meta.labels, "annotations": meta.annotations}}):
                self._reported_pods.add(meta.uid)
                events.append(("Warning", "InjectionMissed",
                               f"pod {meta.namespace}/{meta.name} opted in but was created without "
                               "MLFLOW_TRACKING_URI (the webhook was unavailable): delete it to recreate it"))
        return events

    def _database_and_role(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges,
                           password: str) -> postgres.RoleLogin:
        spec = ctx.spec
        role = postgres.inspect_role(conn, spec.role)
        verifier = postgres.scram_verifier(conn, spec.role, password) if role is None else None
        for summary in postgres.apply(conn, postgres.plan_role(spec, role, verifier, privileges)):
            ctx.did("RoleReconciled", summary)
        database = postgres.inspect_database(conn, spec.database)
        role = postgres.inspect_role(conn, spec.role)
        if database is None and self._clones(spec):
            database = self._clone(ctx, conn, privileges)
        for summary in postgres.apply(conn, postgres.plan_database(spec, database, role)):
            ctx.did("DatabaseReconciled", summary)
        login = postgres.login_as_role(ctx.reach, spec.role, password, spec.database)
        if not login.ok:
            # The password drifted (reset by hand, or the user's Secret rotated).
            verifier = postgres.scram_verifier(conn, spec.role, password)
            for summary in postgres.apply(conn, postgres.plan_role(spec, role, verifier, privileges)):
                ctx.did("RoleReconciled", summary)
            login = postgres.login_as_role(ctx.reach, spec.role, password, spec.database)
            if not login.ok:
                raise StepFailed(cond.DATABASE_READY, "RoleLoginFailed",
                                 f"role {spec.role} cannot log in to {spec.database} even after its password "
                                 "was set: check pg_hba.conf and the role's CONNECT privilege", 30)
        if login.handover_pending:
            # A clone whose hand-over was interrupted (a crash right after CREATE DATABASE).
            try:
                self._handover(ctx, conn, privileges)
            except postgres.TemplateUnavailable as why:
                raise StepFailed(cond.DATABASE_READY, "HandOverFailed",
                                 f"database {spec.database} holds objects of role {postgres.TEMPLATE_ROLE} (a clone "
                                 f"whose hand-over was interrupted) that cannot be given to role {spec.role}: "
                                 f"{why.message}", 60) from None
            login = postgres.login_as_role(ctx.reach, spec.role, password, spec.database)
        return login

    # ---- the template database (see postgres.py: roles, ownership, lock) ----------------
    @staticmethod
    def _clones(spec: BackendSpec) -> bool:
        """New databases are cloned from the template when the operator itself migrates them
        with its bundled MLflow (Inline); a Job migrates with the image's MLflow instead. A
        managed server holds this backend's database alone: a template there would be built
        for one clone, so its database is migrated in place."""
        return (SCHEMA_TEMPLATES and spec.migration == "Inline" and spec.managed is None
                and spec.mlflow_version == revisions.BUNDLED_MLFLOW_VERSION)

    def _clone(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges) -> postgres.DatabaseState | None:
        """Create the backend's (new) database as a clone of the template and hand its
        objects to the role. None when no clone was made: the reason is logged and the
        database is then created empty and migrated in place."""
        spec = ctx.spec
        try:
            template = self._template(ctx, conn, privileges)
            started = time.monotonic()
            if not self._create_from_template(ctx, conn, template):
                # Created meanwhile by another reconcile: the existing-database path takes it.
                return postgres.inspect_database(conn, spec.database)
            try:
                self._handover(ctx, conn, privileges)
            except (postgres.StatementFailed, postgres.TemplateUnavailable) as error:
                postgres.apply(conn, [postgres.plan_discard_clone(spec)])
                raise postgres.TemplateUnavailable(
                    f"the clone's objects could not be handed to role {spec.role} ({error.message}); the clone "
                    "was dropped") from None
            ctx.cloned = (template, time.monotonic() - started)
        except postgres.TemplateUnavailable as why:
            ctx.not_cloned = redact(why.message, ctx.secrets)
            log.warning("%s/%s: database %s not cloned from a template, migrated in place instead: %s",
                        spec.namespace, spec.name, spec.database, ctx.not_cloned)
            return None
        return postgres.inspect_database(conn, spec.database)

    def _template(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges) -> str:
        """The complete template for the bundled MLflow's head on this server (built now if
        there is none), and the admin's membership in the template role."""
        head = revisions.head_revision()
        state = postgres.inspect_template(conn, head)
        try:
            if not postgres.template_ready(state):
                state = self._build_template(ctx, conn, privileges, head)
            for summary in postgres.apply(conn, postgres.plan_template_role(state.role, privileges)):
                log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
        except postgres.StatementFailed as error:
            raise postgres.TemplateUnavailable(error.message) from None
        return postgres.template_name(head)

    def _build_template(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges,
                        head: str) -> postgres.TemplateState:
        """Under the server-wide template lock: build the template under a temporary name by
        MLflow's own migrations, acting as the template role, then publish it."""
        spec = ctx.spec
        name = postgres.template_name(head)
        if not postgres.try_advisory_lock(conn, postgres.TEMPLATE_LOCK_KEY, TEMPLATE_LOCK_TIMEOUT):
            raise postgres.TemplateUnavailable(
                f"another trackop session has been building template {name} for over {TEMPLATE_LOCK_TIMEOUT:.0f}s")
        try:
            state = postgres.inspect_template(conn, head)
            if postgres.template_ready(state):
                return state  # built by another reconcile while this one waited for the lock
            started = time.monotonic()
            build = postgres.template_build_name(head)
            steps = postgres.plan_template_role(state.role, privileges) + postgres.plan_template_build(state)
            for summary in postgres.apply(conn, steps):
                log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
            admin_user, admin_password = ctx.admin_login
            with postgres.connect(ctx.reach, admin_user, admin_password, build) as db:
                postgres.apply(db, postgres.plan_template_schema(open_=True))
            try:
                # In a child process: once per server and MLflow version, not worth keeping
                # MLflow's modules in the operator for the rest of its life.
                result = child.migrate_in_subprocess(
                    manifests.operator_uri(ctx.reach, admin_user, admin_password, build), role=postgres.TEMPLATE_ROLE)
            except (SchemaMigrationError, SchemaNewerThanTarget) as exc:
                raise postgres.TemplateUnavailable(
                    f"building template {name} failed: {redact(str(exc), ctx.secrets)}") from None
            with postgres.connect(ctx.reach, admin_user, admin_password, build) as db:
                postgres.apply(db, postgres.plan_template_schema(open_=False))
                foreign = postgres.objects_not_owned_by(db, postgres.TEMPLATE_ROLE)
            if foreign:
                raise postgres.TemplateUnavailable(
                    f"the template build {build} holds objects not owned by {postgres.TEMPLATE_ROLE} "
                    f"({', '.join(foreign[:5])}), which the hand-over would leave behind")
            for summary in postgres.apply(conn, postgres.plan_template_publish(head)):
                log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
            ctx.did("TemplateBuilt", f"built template database {name} on {spec.postgres.host}:{spec.postgres.port}: "
                                     f"MLflow's migrations from empty to {result.after} in "
                                     f"{time.monotonic() - started:.1f}s, once per server and MLflow version; new "
                                     "backend databases are cloned from it")
            return postgres.inspect_template(conn, head)
        finally:
            postgres.advisory_unlock(conn, postgres.TEMPLATE_LOCK_KEY)

    def _create_from_template(self, ctx: _Context, conn, template: str) -> bool:
        """CREATE DATABASE ... TEMPLATE; False if the database was created meanwhile."""
        for attempt in range(1, CLONE_ATTEMPTS + 1):
            try:
                for summary in postgres.apply(conn, [postgres.plan_clone(ctx.spec, template)]):
                    ctx.did("DatabaseReconciled", summary)
                return True
            except postgres.StatementFailed as error:
                if error.sqlstate == "42P04":  # duplicate_database
                    return False
                # 55006: a session is connected to the template (PostgreSQL itself waited 5 s).
                if error.sqlstate == "55006" and attempt < CLONE_ATTEMPTS:
                    time.sleep(0.5)
                    continue
                raise postgres.TemplateUnavailable(f"cloning {template} failed: {error.message}") from None
        raise AssertionError("unreachable")

    def _handover(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges) -> None:
        """REASSIGN OWNED BY the template role TO the backend's role, inside its database."""
        spec = ctx.spec
        role = postgres.inspect_template(conn, revisions.head_revision()).role
        if role is None:
            raise postgres.TemplateUnavailable(f"role {postgres.TEMPLATE_ROLE} does not exist")
        postgres.check_template_role(role)
        for summary in postgres.apply(conn, postgres.plan_template_role(role, privileges)):
            log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
        admin_user, admin_password = ctx.admin_login
        with postgres.connect(ctx.reach, admin_user, admin_password, spec.database) as db:
            for summary in postgres.apply(db, [postgres.plan_handover(spec)]):
                ctx.did("DatabaseReconciled", summary)

    def _tuning(self, ctx: _Context, conn, privileges: postgres.AdminPrivileges
                ) -> tuple[list[Condition], dict[str, int]]:
        """Settings (when spec.postgres.tuning is given) and the connection budget (always)."""
        spec = ctx.spec
        wanted = spec.effective_tuning
        state = postgres.inspect_tuning(conn, spec, privileges.superuser)
        found: list[Condition] = []
        if spec.tuning is not None:
            desired = tuning.settings_for_scope(wanted)
            # Values in the units pg_settings compares in (kB, or a plain count for max_connections).
            kb_values = tuning.auto_tune(wanted)
            try:
                postgres.check_settings(conn, desired, kb_values)
            except postgres.InvalidSetting as error:
                raise StepFailed(cond.TUNING_APPLIED, error.reason, error.message, 300) from None
            managed_server = spec.managed is not None and wanted.scope == tuning.SCOPE_SERVER
            if managed_server:
                # Startup parameters of the server trackop deploys (managed.parameters), rolled
                # out by its StatefulSet or CloudNativePG before this step: never ALTER SYSTEM.
                plan = []
            elif wanted.scope == tuning.SCOPE_SERVER:
                if not privileges.superuser:
                    raise StepFailed(cond.TUNING_APPLIED, "AdminNotSuperuser",
                                     "tuning scope Server uses ALTER SYSTEM, which needs a superuser admin: "
                                     "use scope Database on a shared server, or a superuser admin Secret", 300)
                plan = postgres.plan_system_tuning(desired, state)
            else:
                plan = postgres.plan_database_tuning(spec, desired, tuning.connection_limit(wanted), state)
            applied = postgres.apply(conn, plan)
            for summary in applied:
                ctx.did("TuningApplied", summary)
            if applied:
                state = postgres.inspect_tuning(conn, spec, privileges.superuser)
            shown = ", ".join(f"{k}={v}" for k, v in desired.items()) or "no settings"
            if managed_server:
                in_effect = postgres.settings_in_effect(conn, list(desired))
                waiting = sorted(name for name in desired if in_effect.get(name) != kb_values.get(name))
            else:
                waiting = sorted(set(desired) & set(state.pending_restart))
            found.append(Condition(cond.TUNING_APPLIED, "True", "Applied",
                                   f"scope {wanted.scope}: {shown}"
                                   + (f"; waiting for a restart: {', '.join(waiting)}" if waiting else "")))
            if wanted.scope == tuning.SCOPE_SERVER:
                after_restart = ("the managed server is restarted with them" if managed_server
                                 else "trackop never restarts an external server")
                found.append(Condition(cond.PENDING_RESTART, "True" if waiting else "False",
                                       "RestartNeeded" if waiting else "NoRestartNeeded",
                                       f"{', '.join(waiting)} take effect after the server restarts; {after_restart}"
                                       if waiting else "every setting is in effect"))
        server = spec.tracking_server
        budget = connections.connection_budget(
            wanted, server.replicas if server else 0, server.workers if server else 0,
            database_limit=state.database_limit, role_limit=state.role_limit,
            server_max_connections=state.max_connections, reserved_slots=state.reserved_slots,
            used_by_others=state.used_by_others)
        found.append(connections.budget_condition(budget))
        return found, {"required": budget.required, "limit": budget.limit}

    def _schema(self, ctx: _Context, password: str, current: str | None) -> tuple[str, str]:
        """``current`` is the revision read while checking the role's login."""
        spec = ctx.spec
        url = manifests.database_uri(spec, password, ctx.reach)
        if spec.migration == "Job":
            return self._schema_by_job(ctx, current)
        if spec.mlflow_version != revisions.BUNDLED_MLFLOW_VERSION:
            raise StepFailed(cond.SCHEMA_READY, "VersionNotBundled",
                             f"Inline migration runs the MLflow {revisions.BUNDLED_MLFLOW_VERSION} bundled in the "
                             f"operator, not {spec.mlflow_version}: set spec.schema.mlflowVersion to "
                             f"{revisions.BUNDLED_MLFLOW_VERSION} or spec.schema.migration to Job", 300)
        head = revisions.head_revision()
        if current == head:
            if ctx.cloned is not None:
                template, seconds = ctx.cloned
                ctx.did("SchemaMigrated", f"cloned the MLflow schema at revision {head} from template {template} "
                                          f"in {seconds:.2f}s: MLflow's migrations ran once, in the template; none "
                                          "ran in this database")
            return head, f"MLflow {spec.mlflow_version} schema at revision {head}"
        try:
            result = migration.migrate(url)
        except SchemaNewerThanTarget as exc:
            raise StepFailed(cond.SCHEMA_READY, "SchemaNewerThanTarget",
                             f"{redact(str(exc), ctx.secrets)}: trackop never downgrades; set "
                             "spec.schema.mlflowVersion to the MLflow version that wrote it", 300) from None
        except SchemaMigrationError as exc:
            raise StepFailed(cond.SCHEMA_READY, "MigrationFailed", redact(str(exc), ctx.secrets), 30) from None
        # Under the advisory lock the revision is read again: another reconcile of the same
        # backend (the drift timer runs beside the handler) may have migrated it meanwhile,
        # and then nothing moved and there is nothing to announce.
        if result.before != result.after:
            ctx.did("SchemaMigrated", f"migrated the MLflow schema from {result.before or 'empty'} to "
                                      f"{result.after} in {result.seconds:.1f}s"
                                      + (f" (not cloned from a template: {ctx.not_cloned})" if ctx.not_cloned else ""))
        return result.after, f"MLflow {spec.mlflow_version} schema at revision {result.after}"

    def _schema_by_job(self, ctx: _Context, current: str | None) -> tuple[str, str]:
        spec = ctx.spec
        previous = ctx.previous_status.get("schema") or {}
        if current and previous.get("mlflowVersion") == spec.mlflow_version and previous.get("revision") == current:
            return current, f"MLflow {spec.mlflow_version} schema at revision {current} (migrated by a Job)"
        name = spec.migration_job
        job = self.kube.read_job(spec.namespace, name)
        if job is None:
            try:
                self.kube.create_job(manifests.migration_job(spec, ctx.owner))
            except ApiException as exc:
                # An image the API server refuses (spec.schema.image is free text): say so, retry later.
                raise StepFailed(cond.SCHEMA_READY, "MigrationJobRejected",
                                 f"the API server refused Job {name}: {_refusal(exc)}; check spec.schema.image",
                                 30) from None
            ctx.did("MigrationJobCreated", f"created Job {name} running mlflow db upgrade with {spec.migration_image}")
            raise StepFailed(cond.SCHEMA_READY, "Migrating", f"Job {name} is migrating the schema", 5)
        finished = {c.type: c for c in job.status.conditions or [] if c.status == "True"}
        if "Complete" in finished:
            if not current:
                raise StepFailed(cond.SCHEMA_READY, "MigrationFailed",
                                 f"Job {name} completed but the database has no MLflow schema", 30)
            ctx.did("SchemaMigrated", f"Job {name} migrated the MLflow schema to {current}")
            return current, f"MLflow {spec.mlflow_version} schema at revision {current} (migrated by Job {name})"
        if "Failed" in finished:
            raise StepFailed(cond.SCHEMA_READY, "MigrationJobFailed",
                             f"Job {name} failed ({finished['Failed'].reason}): read kubectl logs job/{name} "
                             f"-n {spec.namespace}; delete the Job to retry", 60)
        raise StepFailed(cond.SCHEMA_READY, "Migrating", f"Job {name} is migrating the schema", 5)

    def _artifacts(self, ctx: _Context, password: str, keys: tuple[str, ...] | None) -> Condition:
        spec = ctx.spec
        store = spec.artifacts
        checked = True
        try:
            ref = f"{spec.namespace}/{store.credentials_secret}" if store.credentials_secret else None
            for summary in check_store(store, keys, ref):
                ctx.did("BucketCreated", summary)
        except ArtifactsError as error:
            if error.reason != "NoCredentials" or store.credentials_secret is not None:
                raise StepFailed(cond.ARTIFACTS_READY, error.reason, redact(error.message, ctx.secrets),
                                 15) from None
            checked = False  # workload identity: only the server's service account can reach it
        # Direct clients give new experiments a local location unless the database says otherwise.
        with postgres.connect(ctx.reach, spec.role, password, spec.database) as conn:
            plan = postgres.plan_artifact_trigger(store.uri, postgres.inspect_artifact_trigger(conn))
            for summary in postgres.apply(conn, plan):
                ctx.did("ArtifactLocationReconciled", summary)
        if not checked:
            return Condition(cond.ARTIFACTS_READY, "Unknown", "NoCredentialsToCheck",
                             f"{store.uri} is reached through workload identity, which the operator does not "
                             "have: the tracking server's first upload is the check")
        return Condition(cond.ARTIFACTS_READY, "True", "Writable", f"{store.uri} is reachable and writable")

    def _tracking_server(self, ctx: _Context) -> Condition:
        """Service and Deployment; only reached once the schema is at the target head."""
        spec = ctx.spec
        server = spec.tracking_server
        try:
            changed, _ = self.kube.apply(manifests.tracking_server_service(spec, ctx.owner))
            if changed:
                ctx.did("TrackingServerApplied", f"applied Service {spec.tracking_server_name}")
            changed, deployment = self.kube.apply(manifests.tracking_server_deployment(spec, ctx.owner))
        except ApiException as exc:
            # spec.server.resources is free-form and serviceAccountName and image are free
            # text in the CRD: what the API server refuses in the Deployment is reported.
            raise StepFailed(cond.SERVER_READY, "ServerRejected",
                             f"the API server refused the tracking server's objects {spec.tracking_server_name}: "
                             f"{_refusal(exc)}; check spec.server (resources, serviceAccountName, image)",
                             30) from None
        if changed:
            ctx.did("TrackingServerApplied", f"applied Deployment {spec.tracking_server_name} ({server.image})")
        if server.replicas == 0:
            raise StepFailed(cond.SERVER_READY, "ScaledToZero", f"Deployment {spec.tracking_server_name} has 0 replicas", 60)
        status = deployment.status
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        if (status.observed_generation or 0) < deployment.metadata.generation or updated < server.replicas \
                or available < 1:
            raise StepFailed(cond.SERVER_READY, "RollingOut",
                             f"Deployment {spec.tracking_server_name}: {updated}/{server.replicas} updated, "
                             f"{available} available", 3, backoff=False)
        return Condition(cond.SERVER_READY, "True", "Available",
                         f"{available}/{server.replicas} replicas available at {spec.tracking_server_uri}")

    # ---- deletion --------------------------------------------------------------------
    def delete(self, spec: BackendSpec, owner: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """Apply the deletion policy; raises StepFailed if it must be retried."""
        uid = owner["metadata"]["uid"]
        self.remove_copies(spec)
        if spec.managed is not None:
            return self._delete_managed(spec, owner)
        if spec.deletion_policy == "Retain":
            self.kube.release_secret(spec.namespace, spec.connection_secret, uid)
            return [("Normal", "Retained",
                     f"kept database {spec.database}, role {spec.role} and Secret {spec.connection_secret} "
                     "(deletionPolicy Retain)")]
        ctx = _Context(spec, owner, {})
        try:
            admin_user, admin_password = self._admin_credentials(ctx)
            with postgres.connect(spec.postgres, admin_user, admin_password) as conn:
                role = postgres.inspect_role(conn, spec.role)
                database = postgres.inspect_database(conn, spec.database)
                summaries = postgres.apply(conn, postgres.plan_drop(spec, role, database))
        except postgres.PostgresError as error:
            raise StepFailed(cond.READY, error.reason, redact(error.message, ctx.secrets), 15) from None
        except psycopg.OperationalError as exc:
            error = postgres.connection_lost(exc, spec.postgres)
            raise StepFailed(cond.READY, error.reason, redact(error.message, ctx.secrets), 15) from None
        return [("Normal", "Deleted", s) for s in summaries]

    def _delete_managed(self, spec: BackendSpec, owner: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """A server trackop deployed goes with its data (Delete), or leaves its data behind
        (Retain). Its objects are owned by the backend, so the garbage collector removes the
        rest; no SQL is needed, the database goes with the server."""
        uid = owner["metadata"]["uid"]
        server = spec.managed
        if spec.deletion_policy == "Delete":
            # The StatefulSet's claim retention policy (Delete) and CloudNativePG remove the volumes.
            return [("Normal", "Deleted", f"the managed PostgreSQL {server.name} and its volumes are deleted with "
                                          "this TrackingBackend (deletionPolicy Delete)")]
        self.kube.release_secret(spec.namespace, spec.connection_secret, uid)
        if server.engine == ENGINE_CNPG:
            try:
                self.kube.release_object(managed.cnpg_cluster(spec, None, {}), uid)
            except ApiException as exc:
                if exc.status != 404:  # CloudNativePG not installed: nothing was made
                    raise
            return [("Normal", "Retained",
                     f"kept CloudNativePG Cluster {server.name} (still running, with database {spec.database} and "
                     f"role {spec.role}) and Secret {spec.connection_secret} (deletionPolicy Retain)")]
        self.kube.release_secret(spec.namespace, server.superuser_secret, uid)
        return [("Normal", "Retained",
                 f"kept PersistentVolumeClaim {managed.claim_name(spec)} (database {spec.database}, role "
                 f"{spec.role}) and Secrets {server.superuser_secret} and {spec.connection_secret}; the server "
                 "stopped with this TrackingBackend, and a TrackingBackend of the same name starts it again on "
                 "the same data (deletionPolicy Retain)")]
