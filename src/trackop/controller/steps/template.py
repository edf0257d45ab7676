"""New databases cloned from a per-server template database migrated once (see the
postgres package's template module: roles, ownership, the lock), and the hand-over of the
clone's objects to the backend's role."""

from __future__ import annotations

import logging
import time

from ...api.v1alpha1 import BackendSpec
from ...postgres import catalog, errors, locks, sessions, statements, templates
from ...redaction import redact
from ...schema import child, revisions
from ...schema.errors import SchemaMigrationError, SchemaNewerThanTarget
from ...specs.connection_secret import operator_uri
from ..outcome import Context

log = logging.getLogger(__name__)

TEMPLATE_LOCK_TIMEOUT = 60.0  # seconds to wait for another session's template build
CLONE_ATTEMPTS = 3


def clones(spec: BackendSpec, schema_templates: bool) -> bool:
    """New databases are cloned from the template when the operator itself migrates them
    with its bundled MLflow (Inline); a Job migrates with the image's MLflow instead. A
    managed server holds this backend's database alone: a template there would be built
    for one clone, so its database is migrated in place."""
    return (schema_templates and spec.migration == "Inline" and spec.managed is None
            and spec.mlflow_version == revisions.BUNDLED_MLFLOW_VERSION)


def clone(ctx: Context, conn: sessions.Session,
          privileges: catalog.AdminPrivileges) -> catalog.DatabaseState | None:
    """Create the backend's (new) database as a clone of the template and hand its
    objects to the role. None when no clone was made: the reason is logged and the
    database is then created empty and migrated in place."""
    spec = ctx.spec
    try:
        name = _template(ctx, conn, privileges)
        started = time.monotonic()
        if not _create_from_template(ctx, conn, name):
            # Created meanwhile by another reconcile: the existing-database path takes it.
            return catalog.inspect_database(conn, spec.database)
        try:
            handover(ctx, conn, privileges)
        except (errors.StatementFailed, templates.TemplateUnavailable) as error:
            statements.apply(conn, [templates.plan_discard_clone(spec)])
            raise templates.TemplateUnavailable(
                f"the clone's objects could not be handed to role {spec.role} ({error.message}); the clone "
                "was dropped") from None
        ctx.cloned = (name, time.monotonic() - started)
    except templates.TemplateUnavailable as why:
        ctx.not_cloned = redact(why.message, ctx.secrets)
        log.warning("%s/%s: database %s not cloned from a template, migrated in place instead: %s",
                    spec.namespace, spec.name, spec.database, ctx.not_cloned)
        return None
    return catalog.inspect_database(conn, spec.database)


def _template(ctx: Context, conn: sessions.Session, privileges: catalog.AdminPrivileges) -> str:
    """The complete template for the bundled MLflow's head on this server (built now if
    there is none), and the admin's membership in the template role."""
    head = revisions.head_revision()
    state = templates.inspect_template(conn, head)
    try:
        if not templates.template_ready(state):
            state = _build(ctx, conn, privileges, head)
        for summary in statements.apply(conn, templates.plan_template_role(state.role, privileges)):
            log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
    except errors.StatementFailed as error:
        raise templates.TemplateUnavailable(error.message) from None
    return templates.template_name(head)


def _build(ctx: Context, conn: sessions.Session, privileges: catalog.AdminPrivileges,
           head: str) -> templates.TemplateState:
    """Under the server-wide template lock: build the template under a temporary name by
    MLflow's own migrations, acting as the template role, then publish it."""
    spec = ctx.spec
    name = templates.template_name(head)
    if not locks.try_advisory_lock(conn, templates.TEMPLATE_LOCK_KEY, TEMPLATE_LOCK_TIMEOUT):
        raise templates.TemplateUnavailable(
            f"another trackop session has been building template {name} for over {TEMPLATE_LOCK_TIMEOUT:.0f}s")
    try:
        state = templates.inspect_template(conn, head)
        if templates.template_ready(state):
            return state  # built by another reconcile while this one waited for the lock
        started = time.monotonic()
        build = templates.template_build_name(head)
        steps = templates.plan_template_role(state.role, privileges) + templates.plan_template_build(state)
        for summary in statements.apply(conn, steps):
            log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
        admin_user, admin_password = ctx.admin_login
        with sessions.connect(ctx.reach, admin_user, admin_password, build) as db:
            statements.apply(db, templates.plan_template_schema(open_=True))
        try:
            # In a child process: once per server and MLflow version, not worth keeping
            # MLflow's modules in the operator for the rest of its life.
            result = child.migrate_in_subprocess(
                operator_uri(ctx.reach, admin_user, admin_password, build), role=templates.TEMPLATE_ROLE)
        except (SchemaMigrationError, SchemaNewerThanTarget) as exc:
            raise templates.TemplateUnavailable(
                f"building template {name} failed: {redact(str(exc), ctx.secrets)}") from None
        with sessions.connect(ctx.reach, admin_user, admin_password, build) as db:
            statements.apply(db, templates.plan_template_schema(open_=False))
            foreign = templates.objects_not_owned_by(db, templates.TEMPLATE_ROLE)
        if foreign:
            raise templates.TemplateUnavailable(
                f"the template build {build} holds objects not owned by {templates.TEMPLATE_ROLE} "
                f"({', '.join(foreign[:5])}), which the hand-over would leave behind")
        for summary in statements.apply(conn, templates.plan_template_publish(head)):
            log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
        ctx.did("TemplateBuilt", f"built template database {name} on {spec.postgres.host}:{spec.postgres.port}: "
                                 f"MLflow's migrations from empty to {result.after} in "
                                 f"{time.monotonic() - started:.1f}s, once per server and MLflow version; new "
                                 "backend databases are cloned from it")
        return templates.inspect_template(conn, head)
    finally:
        locks.advisory_unlock(conn, templates.TEMPLATE_LOCK_KEY)


def _create_from_template(ctx: Context, conn: sessions.Session, name: str) -> bool:
    """CREATE DATABASE ... TEMPLATE; False if the database was created meanwhile."""
    for attempt in range(1, CLONE_ATTEMPTS + 1):
        try:
            for summary in statements.apply(conn, [templates.plan_clone(ctx.spec, name)]):
                ctx.did("DatabaseReconciled", summary)
            return True
        except errors.StatementFailed as error:
            if error.sqlstate == "42P04":  # duplicate_database
                return False
            # 55006: a session is connected to the template (PostgreSQL itself waited 5 s).
            if error.sqlstate == "55006" and attempt < CLONE_ATTEMPTS:
                time.sleep(0.5)
                continue
            raise templates.TemplateUnavailable(f"cloning {name} failed: {error.message}") from None
    raise AssertionError("unreachable")


def handover(ctx: Context, conn: sessions.Session, privileges: catalog.AdminPrivileges) -> None:
    """REASSIGN OWNED BY the template role TO the backend's role, inside its database."""
    spec = ctx.spec
    role = templates.inspect_template(conn, revisions.head_revision()).role
    if role is None:
        raise templates.TemplateUnavailable(f"role {templates.TEMPLATE_ROLE} does not exist")
    templates.check_template_role(role)
    for summary in statements.apply(conn, templates.plan_template_role(role, privileges)):
        log.info("%s/%s (template): %s", ctx.spec.namespace, ctx.spec.name, summary)
    admin_user, admin_password = ctx.admin_login
    with sessions.connect(ctx.reach, admin_user, admin_password, spec.database) as db:
        for summary in statements.apply(db, [templates.plan_handover(spec)]):
            ctx.did("DatabaseReconciled", summary)
