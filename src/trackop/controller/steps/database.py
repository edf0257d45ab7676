"""The backend's role and database on the server, and the role's own login. Condition: DatabaseReady."""

from __future__ import annotations

from ...api import conditions as cond
from ...postgres import catalog, plans, sessions, statements, templates
from ..outcome import Context, StepFailed
from . import template


def ensure(ctx: Context, conn: sessions.Session, privileges: catalog.AdminPrivileges, password: str,
           clones: bool) -> sessions.RoleLogin:
    """Role and database as the spec says (a new database cloned from the template when
    ``clones``), the role able to log in with ``password``; its login, with the revision read."""
    spec = ctx.spec
    role = catalog.inspect_role(conn, spec.role)
    verifier = plans.scram_verifier(conn, spec.role, password) if role is None else None
    for summary in statements.apply(conn, plans.plan_role(spec, role, verifier, privileges)):
        ctx.did("RoleReconciled", summary)
    database = catalog.inspect_database(conn, spec.database)
    role = catalog.inspect_role(conn, spec.role)
    if database is None and clones:
        database = template.clone(ctx, conn, privileges)
    for summary in statements.apply(conn, plans.plan_database(spec, database, role)):
        ctx.did("DatabaseReconciled", summary)
    login = sessions.login_as_role(ctx.reach, spec.role, password, spec.database)
    if not login.ok:
        # The password drifted (reset by hand, or the user's Secret rotated).
        verifier = plans.scram_verifier(conn, spec.role, password)
        for summary in statements.apply(conn, plans.plan_role(spec, role, verifier, privileges)):
            ctx.did("RoleReconciled", summary)
        login = sessions.login_as_role(ctx.reach, spec.role, password, spec.database)
        if not login.ok:
            raise StepFailed(cond.DATABASE_READY, "RoleLoginFailed",
                             f"role {spec.role} cannot log in to {spec.database} even after its password "
                             "was set: check pg_hba.conf and the role's CONNECT privilege", 30)
    if login.handover_pending:
        # A clone whose hand-over was interrupted (a crash right after CREATE DATABASE).
        try:
            template.handover(ctx, conn, privileges)
        except templates.TemplateUnavailable as why:
            raise StepFailed(cond.DATABASE_READY, "HandOverFailed",
                             f"database {spec.database} holds objects of role {templates.TEMPLATE_ROLE} (a clone "
                             f"whose hand-over was interrupted) that cannot be given to role {spec.role}: "
                             f"{why.message}", 60) from None
        login = sessions.login_as_role(ctx.reach, spec.role, password, spec.database)
    return login
