"""``deletionPolicy``: what a deleted backend leaves behind (Retain) or takes with it (Delete)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client import ApiException

from ...api import conditions as cond
from ...api.v1alpha1 import ENGINE_CNPG, BackendSpec
from ...kube.client import Kube
from ...postgres import catalog, errors, plans, sessions, statements
from ...redaction import redact
from ...specs import managed_server
from ..outcome import Context, StepFailed
from .credentials import admin_credentials

Events = list[tuple[str, str, str]]


def delete(spec: BackendSpec, owner: Mapping[str, Any], kube: Kube) -> Events:
    """Apply the deletion policy (the Secret copies are gone already); raises StepFailed
    if it must be retried."""
    uid = owner["metadata"]["uid"]
    if spec.managed is not None:
        return _delete_managed(spec, owner, kube)
    if spec.deletion_policy == "Retain":
        kube.release_secret(spec.namespace, spec.connection_secret, uid)
        return [("Normal", "Retained",
                 f"kept database {spec.database}, role {spec.role} and Secret {spec.connection_secret} "
                 "(deletionPolicy Retain)")]
    ctx = Context(spec, owner, {})
    try:
        admin_user, admin_password = admin_credentials(ctx, kube)
        with sessions.connect(spec.postgres, admin_user, admin_password) as conn:
            role = catalog.inspect_role(conn, spec.role)
            database = catalog.inspect_database(conn, spec.database)
            summaries = statements.apply(conn, plans.plan_drop(spec, role, database))
    except errors.PostgresError as error:
        raise StepFailed(cond.READY, error.reason, redact(error.message, ctx.secrets), 15) from None
    except sessions.SessionBroken as exc:
        error = sessions.connection_lost(exc, spec.postgres)
        raise StepFailed(cond.READY, error.reason, redact(error.message, ctx.secrets), 15) from None
    return [("Normal", "Deleted", s) for s in summaries]


def _delete_managed(spec: BackendSpec, owner: Mapping[str, Any], kube: Kube) -> Events:
    """A server trackop deployed goes with its data (Delete), or leaves its data behind
    (Retain). Its objects are owned by the backend, so the garbage collector removes the
    rest; no SQL is needed, the database goes with the server."""
    uid = owner["metadata"]["uid"]
    server = spec.managed
    if spec.deletion_policy == "Delete":
        # The StatefulSet's claim retention policy (Delete) and CloudNativePG remove the volumes.
        return [("Normal", "Deleted", f"the managed PostgreSQL {server.name} and its volumes are deleted with "
                                      "this TrackingBackend (deletionPolicy Delete)")]
    kube.release_secret(spec.namespace, spec.connection_secret, uid)
    if server.engine == ENGINE_CNPG:
        try:
            kube.release_object(managed_server.cnpg_cluster(spec, None, {}), uid)
        except ApiException as exc:
            if exc.status != 404:  # CloudNativePG not installed: nothing was made
                raise
        return [("Normal", "Retained",
                 f"kept CloudNativePG Cluster {server.name} (still running, with database {spec.database} and "
                 f"role {spec.role}) and Secret {spec.connection_secret} (deletionPolicy Retain)")]
    kube.release_secret(spec.namespace, server.superuser_secret, uid)
    return [("Normal", "Retained",
             f"kept PersistentVolumeClaim {managed_server.claim_name(spec)} (database {spec.database}, role "
             f"{spec.role}) and Secrets {server.superuser_secret} and {spec.connection_secret}; the server "
             "stopped with this TrackingBackend, and a TrackingBackend of the same name starts it again on "
             "the same data (deletionPolicy Retain)")]
