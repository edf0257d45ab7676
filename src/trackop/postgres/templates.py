"""The template database: new backends are cloned, not migrated.

MLflow's migrations are about 800 statements and a second of CPU per database. Per
server and Alembic head, trackop keeps one template database, made once by MLflow's own
migrations (schema.migrate), and creates a new backend's database with
``CREATE DATABASE db WITH OWNER role TEMPLATE trackop_mlflow_<head>`` (a file-level
copy, about 0.1 s), then hands the copied objects to the backend's role.

Who owns what, and why:
- The objects inside a template (tables, sequences, indexes, types, alembic_version) are
  owned by ``trackop_template``, a NOLOGIN role that owns nothing else on the server.
  Inside a clone, ``REASSIGN OWNED BY trackop_template TO <backend role>`` gives every one
  of them to the backend's role, which must own them: MLflow's later migrations ALTER
  them as that role, and the drift checks log in as it.
- The template *database* is owned by the admin that built it, never by
  ``trackop_template``. REASSIGN OWNED also reassigns the role's shared objects
  (databases, tablespaces) wherever it runs: a template database owned by
  ``trackop_template`` would be handed to the first backend role cloned from it
  (verified on PostgreSQL 15). So the role owns objects inside databases only, and a
  clone is refused when it owns any database or tablespace (``TemplateRole.shared_objects``).
- The template is ``IS_TEMPLATE true``: any CREATEDB role may clone it, not only its
  owner, so backends whose admin Secrets name other admins clone it too (it holds an
  empty schema, no data). ``ALLOW_CONNECTIONS false``: CREATE DATABASE ... TEMPLATE
  fails (SQLSTATE 55006) while any session is connected to the template, so nobody may
  connect to it once it is complete.
- REASSIGN OWNED needs the admin to have the privileges of both roles: a non-superuser
  admin is granted membership in ``trackop_template`` (PostgreSQL 15 lets a CREATEROLE
  role grant any non-superuser role; 16 and later only roles it holds with ADMIN OPTION,
  which its creator gets). Where that is refused, the backend is migrated in place.

Completeness: a template is built under a temporary name (``..._build``) and renamed,
marked and closed to connections in one transaction only once MLflow's migrations are
through. A database under the final name with trackop's marker is therefore complete;
a build database left by a crash is dropped and rebuilt. The build runs under an
advisory lock (TEMPLATE_LOCK_KEY) taken in database ``postgres``, where every trackop
admin session connects: advisory locks are per database, so that is what makes it
server-wide, and concurrent reconciles and operator replicas build it once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..api.v1alpha1 import BackendSpec
from .catalog import AdminPrivileges
from .statements import Statement

TEMPLATE_ROLE = "trackop_template"
TEMPLATE_ROLE_MARKER = ("trackop template role: owns the MLflow objects inside trackop's template databases "
                        "(trackop_mlflow_<revision>); not a backend (docs/backend.md)")
TEMPLATE_PREFIX = "trackop_mlflow_"
TEMPLATE_LOCK_KEY: int = int.from_bytes(hashlib.sha256(b"trackop.dev/mlflow-template").digest()[:8], "big",
                                        signed=True)


class TemplateUnavailable(Exception):
    """A clone cannot be made; the message says why and what to do. The backend's database
    is then created empty and migrated in place (never a condition of its own)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def template_name(revision: str) -> str:
    return f"{TEMPLATE_PREFIX}{revision}"


def template_build_name(revision: str) -> str:
    return f"{TEMPLATE_PREFIX}{revision}_build"


def template_marker(revision: str) -> str:
    return (f"trackop template: the MLflow schema at Alembic revision {revision}, made by MLflow's own "
            "migrations; new backend databases are cloned from it; not a backend (docs/backend.md)")


def template_build_marker(revision: str) -> str:
    return (f"trackop template build for Alembic revision {revision}: incomplete until renamed to "
            f"{template_name(revision)}; a leftover is dropped and rebuilt")


@dataclass(frozen=True)
class TemplateDatabase:
    name: str
    owner: str
    comment: str | None
    is_template: bool
    admin_has_owner_privileges: bool  # the admin may rename or drop it


@dataclass(frozen=True)
class TemplateRole:
    comment: str | None
    can_login: bool
    admin_has_privileges: bool        # pg_has_role(current_user, role, 'USAGE'): REASSIGN OWNED, SET ROLE
    shared_objects: int               # databases and tablespaces it owns (must be none)


@dataclass(frozen=True)
class TemplateState:
    revision: str
    admin: str                        # current_user
    template: TemplateDatabase | None
    build: TemplateDatabase | None
    role: TemplateRole | None


def inspect_template(conn: psycopg.Connection, revision: str) -> TemplateState:
    names = [template_name(revision), template_build_name(revision)]
    rows = conn.execute(
        """SELECT datname, pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'), datistemplate,
                  pg_has_role(current_user, datdba, 'USAGE')
           FROM pg_database WHERE datname = ANY(%s)""", (names,)).fetchall()
    found = {row[0]: TemplateDatabase(*row) for row in rows}
    role = conn.execute(
        """SELECT shobj_description(r.oid, 'pg_authid'), r.rolcanlogin, pg_has_role(current_user, r.oid, 'USAGE'),
                  (SELECT count(*) FROM pg_database WHERE datdba = r.oid)
                    + (SELECT count(*) FROM pg_tablespace WHERE spcowner = r.oid)
           FROM pg_roles r WHERE r.rolname = %s""", (TEMPLATE_ROLE,)).fetchone()
    admin = conn.execute("SELECT current_user").fetchone()[0]
    return TemplateState(revision, admin, found.get(names[0]), found.get(names[1]),
                         TemplateRole(*role) if role else None)


def check_template_role(role: TemplateRole | None) -> None:
    """Raises TemplateUnavailable unless the role is trackop's and owns no shared object, so
    that REASSIGN OWNED BY it moves the objects of one database and nothing else."""
    if role is not None and role.comment != TEMPLATE_ROLE_MARKER:
        raise TemplateUnavailable(
            f"role {TEMPLATE_ROLE} exists and was not made by trackop (trackop never takes a role over): "
            "rename or drop it to let trackop clone new backends from a template")
    if role is not None and role.shared_objects:
        raise TemplateUnavailable(
            f"role {TEMPLATE_ROLE} owns {role.shared_objects} database(s) or tablespace(s), which REASSIGN OWNED "
            f"would hand to a backend's role: ALTER DATABASE ... OWNER TO another role")


def template_ready(state: TemplateState) -> bool:
    """True: a complete template to clone; False: none yet (build it). Raises
    TemplateUnavailable when trackop's names are taken by something it did not make, or
    when the hand-over could give away more than the clone's objects."""
    role = state.role
    check_template_role(role)
    template = state.template
    if template is None:
        return False
    if template.comment != template_marker(state.revision):
        raise TemplateUnavailable(
            f"database {template.name} exists and was not made by trackop (trackop never takes a database "
            "over): rename or drop it to let trackop build its template")
    if role is None:
        raise TemplateUnavailable(
            f"template {template.name} exists but role {TEMPLATE_ROLE}, which owns its objects, does not: remove "
            "the template (docs/backend.md) and trackop builds it again")
    return True


def plan_template_role(role: TemplateRole | None, admin: AdminPrivileges) -> list[Statement]:
    """The NOLOGIN role that owns the template's objects, and the admin's membership in it
    (REASSIGN OWNED BY it and SET ROLE to it need that, unless superuser)."""
    name = sql.Identifier(TEMPLATE_ROLE)
    steps: list[Statement] = []
    if role is None:
        steps.append(Statement(f"created role {TEMPLATE_ROLE} (NOLOGIN, owns the template's objects)",
                               sql.SQL("CREATE ROLE {} WITH NOLOGIN NOCREATEDB NOCREATEROLE").format(name)))
        steps.append(Statement(f"marked role {TEMPLATE_ROLE} as trackop's",
                               sql.SQL("COMMENT ON ROLE {} IS {}").format(name, sql.Literal(TEMPLATE_ROLE_MARKER))))
    elif role.can_login:
        steps.append(Statement(f"restored NOLOGIN on role {TEMPLATE_ROLE}",
                               sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(name)))
    if not admin.superuser and (role is None or not role.admin_has_privileges):
        steps.append(Statement(f"let the admin act for role {TEMPLATE_ROLE}",
                               sql.SQL("GRANT {} TO CURRENT_USER").format(name)))
    return steps


def plan_template_build(state: TemplateState) -> list[Statement]:
    """Drop a build left by a crash (only trackop's), then an empty build database owned by
    the admin, marked, closed to PUBLIC. Run under the template lock."""
    name = template_build_name(state.revision)
    build_id = sql.Identifier(name)
    steps: list[Statement] = []
    leftover = state.build
    if leftover is not None:
        # Ours: marked, or (a crash between CREATE DATABASE and its COMMENT) unmarked and
        # owned by this very admin under trackop's reserved name.
        if leftover.comment != template_build_marker(state.revision) and not (
                leftover.comment is None and leftover.owner == state.admin):
            raise TemplateUnavailable(
                f"database {name} exists and was not made by trackop (trackop never takes a database over): "
                "rename or drop it to let trackop build its template")
        if not leftover.admin_has_owner_privileges:
            raise TemplateUnavailable(
                f"database {name}, left by an interrupted template build, is owned by {leftover.owner}, whose "
                f"databases admin {state.admin} may not drop: drop it as {leftover.owner} or a superuser")
        steps.append(Statement(f"dropped {name}, left by an interrupted template build",
                               sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(build_id), autocommit=True))
    steps.append(Statement(f"created database {name} to build the MLflow template in",
                           sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 ENCODING 'UTF8'").format(build_id),
                           autocommit=True))
    steps.append(Statement(f"marked database {name} as trackop's template build",
                           sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                               build_id, sql.Literal(template_build_marker(state.revision)))))
    steps.append(Statement(f"revoked CONNECT on database {name} from PUBLIC",
                           sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(build_id)))
    return steps


def plan_template_schema(open_: bool) -> list[Statement]:
    """In the build database: let the template role create MLflow's objects in ``public``
    (owned by pg_database_owner, the admin here) for the migration, and take that back
    after, so clones get ``public`` exactly as a new database has it."""
    role = sql.Identifier(TEMPLATE_ROLE)
    if open_:
        return [Statement(f"let {TEMPLATE_ROLE} create in schema public",
                          sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role))]
    return [Statement(f"revoked CREATE on schema public from {TEMPLATE_ROLE}",
                      sql.SQL("REVOKE CREATE ON SCHEMA public FROM {}").format(role))]


def set_role(role: str) -> sql.Composed:
    """For the template's migration: the admin's session acts as the template role, so
    every object MLflow's migrations create is that role's."""
    return sql.SQL("SET ROLE {}").format(sql.Identifier(role))


def objects_not_owned_by(conn: psycopg.Connection, role: str) -> list[str]:
    """Relations, types and functions in ``public`` of the connected database that ``role``
    does not own (a template must have none: the hand-over moves only the role's objects)."""
    rows = conn.execute(
        """SELECT kind || ' ' || name FROM (
             SELECT 'relation' AS kind, relname::text AS name, relowner AS owner FROM pg_class
              WHERE relnamespace = 'public'::regnamespace
             UNION ALL SELECT 'type', typname::text, typowner FROM pg_type WHERE typnamespace = 'public'::regnamespace
             UNION ALL SELECT 'function', proname::text, proowner FROM pg_proc WHERE pronamespace = 'public'::regnamespace
           ) o WHERE owner <> (SELECT oid FROM pg_roles WHERE rolname = %s) ORDER BY 1""", (role,)).fetchall()
    return [row[0] for row in rows]


def plan_template_publish(revision: str) -> list[Statement]:
    """One transaction: the complete build becomes the template under its final name,
    marked, cloneable by any CREATEDB role and closed to connections."""
    final = sql.Identifier(template_name(revision))
    return [
        Statement(f"renamed the complete build to {template_name(revision)}",
                  sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(template_build_name(revision)),
                                                                   final)),
        Statement(f"marked database {template_name(revision)} as trackop's template",
                  sql.SQL("COMMENT ON DATABASE {} IS {}").format(final, sql.Literal(template_marker(revision)))),
        Statement(f"made {template_name(revision)} a template closed to connections",
                  sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(final)),
    ]


def plan_clone(spec: BackendSpec, template: str) -> Statement:
    return Statement(
        f"created database {spec.database} owned by {spec.role}, cloned from template {template}",
        sql.SQL("CREATE DATABASE {} WITH OWNER {} TEMPLATE {}").format(
            sql.Identifier(spec.database), sql.Identifier(spec.role), sql.Identifier(template)),
        autocommit=True,
    )


def plan_discard_clone(spec: BackendSpec) -> Statement:
    """A clone made seconds ago whose hand-over was refused: the database goes, and is made
    again empty (then migrated in place)."""
    return Statement(f"dropped database {spec.database}: its objects could not be handed to {spec.role}",
                     sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(spec.database)),
                     autocommit=True)


def plan_handover(spec: BackendSpec) -> Statement:
    """Run inside the backend's database: every object the clone brought (owned by the
    template role) becomes the backend role's. Only objects of the current database, and
    the template role's shared objects, of which it has none (see above)."""
    return Statement(
        f"gave role {spec.role} the MLflow objects in {spec.database} (REASSIGN OWNED BY {TEMPLATE_ROLE})",
        sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(TEMPLATE_ROLE), sql.Identifier(spec.role)),
    )
