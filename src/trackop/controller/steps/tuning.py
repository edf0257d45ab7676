"""``spec.postgres.tuning`` applied (per database, or server-wide), and the connection budget.
Conditions: TuningApplied, PendingRestart, ConnectionBudget."""

from __future__ import annotations

from ...api import conditions as cond
from ...api import connections, tuning
from ...api.conditions import Condition
from ...postgres import catalog, errors, server_settings, sessions, statements
from ..outcome import Context, StepFailed


def ensure(ctx: Context, conn: sessions.Session, privileges: catalog.AdminPrivileges
           ) -> tuple[list[Condition], dict[str, int]]:
    """Settings (when spec.postgres.tuning is given) and the connection budget (always)."""
    spec = ctx.spec
    wanted = spec.effective_tuning
    state = server_settings.inspect_tuning(conn, spec, privileges.superuser)
    found: list[Condition] = []
    if spec.tuning is not None:
        desired = tuning.settings_for_scope(wanted)
        # Values in the units pg_settings compares in (kB, or a plain count for max_connections).
        kb_values = tuning.auto_tune(wanted)
        try:
            server_settings.check_settings(conn, desired, kb_values)
        except errors.InvalidSetting as error:
            raise StepFailed(cond.TUNING_APPLIED, error.reason, error.message, 300) from None
        startup_parameters = spec.managed is not None and wanted.scope == tuning.SCOPE_SERVER
        if startup_parameters:
            # Startup parameters of the server trackop deploys (managed_server.parameters), rolled
            # out by its StatefulSet or CloudNativePG before this step: never ALTER SYSTEM.
            plan = []
        elif wanted.scope == tuning.SCOPE_SERVER:
            if not privileges.superuser:
                raise StepFailed(cond.TUNING_APPLIED, "AdminNotSuperuser",
                                 "tuning scope Server uses ALTER SYSTEM, which needs a superuser admin: "
                                 "use scope Database on a shared server, or a superuser admin Secret", 300)
            plan = server_settings.plan_system_tuning(desired, state)
        else:
            plan = server_settings.plan_database_tuning(spec, desired, tuning.connection_limit(wanted), state)
        applied = statements.apply(conn, plan)
        for summary in applied:
            ctx.did("TuningApplied", summary)
        if applied:
            state = server_settings.inspect_tuning(conn, spec, privileges.superuser)
        shown = ", ".join(f"{k}={v}" for k, v in desired.items()) or "no settings"
        if startup_parameters:
            in_effect = server_settings.settings_in_effect(conn, list(desired))
            waiting = sorted(name for name in desired if in_effect.get(name) != kb_values.get(name))
        else:
            waiting = sorted(set(desired) & set(state.pending_restart))
        found.append(Condition(cond.TUNING_APPLIED, "True", "Applied",
                               f"scope {wanted.scope}: {shown}"
                               + (f"; waiting for a restart: {', '.join(waiting)}" if waiting else "")))
        if wanted.scope == tuning.SCOPE_SERVER:
            after_restart = ("the managed server is restarted with them" if startup_parameters
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
