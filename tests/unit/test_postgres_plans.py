"""The backend's role and database plans (trackop.postgres.plans): create, restore, drop,
ownership, quoting (no database)."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec
from trackop.postgres import errors, plans, statements
from trackop.postgres.catalog import AdminPrivileges, DatabaseState, RoleState

VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
SUPERUSER = AdminPrivileges(superuser=True, createdb=True, createrole=True)
CREATOR = AdminPrivileges(superuser=False, createdb=True, createrole=True)


def make_spec(overrides: dict | None = None, namespace: str = "ml-platform", name: str = "team-a") -> BackendSpec:
    spec = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}},
                         "database": "mlflow_team_a", "role": "mlflow_team_a"}}
    for key, value in (overrides or {}).items():
        spec["postgres"][key] = copy.deepcopy(value)
    return parse(namespace, name, spec)


SPEC = make_spec()


def render(steps: list[statements.Statement]) -> list[str]:
    return [step.query.as_string(None) for step in steps]


def role_state(**changes) -> RoleState:
    converged = RoleState(superuser=False, createdb=False, createrole=False, can_login=True, replication=False,
                          bypass_rls=False, comment=SPEC.owner_marker, admin_is_member=True)
    return dataclasses.replace(converged, **changes)


def db_state(**changes) -> DatabaseState:
    converged = DatabaseState(owner=SPEC.role, comment=SPEC.owner_marker, public_can_connect=False)
    return dataclasses.replace(converged, **changes)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- plan_role ---------------------------------------------------------------------------

def test_new_role_is_created_with_login_only_and_marked():
    sqls = render(plans.plan_role(SPEC, None, VERIFIER, SUPERUSER))
    assert len(sqls) == 2
    create, comment = sqls
    assert create.startswith('CREATE ROLE "mlflow_team_a" WITH ')
    for keyword in ("LOGIN", "NOCREATEDB", "NOCREATEROLE"):
        assert f" {keyword}" in create
    assert " SUPERUSER" not in create and " CREATEDB" not in create and " CREATEROLE" not in create
    assert f"PASSWORD {quote_literal(VERIFIER)}" in create
    assert comment == f'COMMENT ON ROLE "mlflow_team_a" IS {quote_literal(SPEC.owner_marker)}'


def test_new_role_steps_are_transactional():
    assert not any(step.autocommit for step in plans.plan_role(SPEC, None, VERIFIER, CREATOR))


def test_new_role_needs_a_verifier():
    with pytest.raises(AssertionError):
        plans.plan_role(SPEC, None, None, SUPERUSER)


def test_summaries_never_contain_the_verifier():
    for steps in (plans.plan_role(SPEC, None, VERIFIER, CREATOR),
                  plans.plan_role(SPEC, role_state(), VERIFIER, CREATOR)):
        for step in steps:
            assert VERIFIER not in step.summary
            assert "SCRAM" not in step.summary


@pytest.mark.parametrize("comment", [None, "", "managed by someone else",
                                     "managed by trackop for TrackingBackend other/team-a"])
def test_existing_role_with_another_comment_is_taken(comment):
    with pytest.raises(errors.RoleTaken) as info:
        plans.plan_role(SPEC, role_state(comment=comment), None, SUPERUSER)
    assert "mlflow_team_a" in info.value.message
    assert info.value.reason == "RoleNotManagedByTrackop"


def test_role_of_another_backend_in_another_namespace_is_taken():
    other = make_spec(namespace="other-ns")
    with pytest.raises(errors.RoleTaken):
        plans.plan_role(other, role_state(), None, SUPERUSER)


def test_converged_role_gives_an_empty_plan():
    assert plans.plan_role(SPEC, role_state(), None, SUPERUSER) == []
    assert plans.plan_role(SPEC, role_state(admin_is_member=True), None, CREATOR) == []


@pytest.mark.parametrize("field, value, keyword", [
    ("can_login", False, "LOGIN"),
    ("superuser", True, "NOSUPERUSER"),
    ("createdb", True, "NOCREATEDB"),
    ("createrole", True, "NOCREATEROLE"),
    ("replication", True, "NOREPLICATION"),
    ("bypass_rls", True, "NOBYPASSRLS"),
])
def test_single_drifted_attribute_is_the_only_one_named(field, value, keyword):
    sqls = render(plans.plan_role(SPEC, role_state(**{field: value}), None, SUPERUSER))
    assert sqls == [f'ALTER ROLE "mlflow_team_a" WITH {keyword}']


def test_several_drifted_attributes_in_one_statement():
    sqls = render(plans.plan_role(SPEC, role_state(createdb=True, bypass_rls=True, can_login=False),
                                  None, SUPERUSER))
    assert len(sqls) == 1
    words = sqls[0].removeprefix('ALTER ROLE "mlflow_team_a" WITH ').split()
    assert sorted(words) == ["LOGIN", "NOBYPASSRLS", "NOCREATEDB"]


def test_verifier_on_an_existing_role_sets_the_password():
    sqls = render(plans.plan_role(SPEC, role_state(), VERIFIER, SUPERUSER))
    assert sqls == [f'ALTER ROLE "mlflow_team_a" WITH PASSWORD {quote_literal(VERIFIER)}']


def test_drift_and_password_together():
    sqls = render(plans.plan_role(SPEC, role_state(createdb=True), VERIFIER, SUPERUSER))
    assert sqls == ['ALTER ROLE "mlflow_team_a" WITH NOCREATEDB',
                    f'ALTER ROLE "mlflow_team_a" WITH PASSWORD {quote_literal(VERIFIER)}']


GRANT = 'GRANT "mlflow_team_a" TO CURRENT_USER'


@pytest.mark.parametrize("admin, state, expect_grant", [
    (SUPERUSER, None, False),
    (CREATOR, None, True),
    (SUPERUSER, role_state(admin_is_member=False), False),
    (CREATOR, role_state(admin_is_member=False), True),
    (CREATOR, role_state(admin_is_member=True), False),
])
def test_grant_to_current_user_only_when_needed(admin, state, expect_grant):
    sqls = render(plans.plan_role(SPEC, state, VERIFIER if state is None else None, admin))
    assert (GRANT in sqls) is expect_grant
    if expect_grant:
        assert sqls[-1] == GRANT  # after the role exists


def test_verifier_with_quotes_is_a_single_literal():
    nasty = "SCRAM-SHA-256$4096:a'b$c'; DROP ROLE x; --"
    create = render(plans.plan_role(SPEC, None, nasty, SUPERUSER))[0]
    assert create.endswith(f"PASSWORD {quote_literal(nasty)}")


# ---- hostile-but-valid identifiers are quoted ----------------------------------------------

HOSTILE = dataclasses.replace(SPEC, role='a"b', database='d"; DROP DATABASE x; --')


def test_hostile_role_name_is_quoted_in_every_role_statement():
    sqls = render(plans.plan_role(HOSTILE, None, VERIFIER, CREATOR))
    assert sqls[0].startswith('CREATE ROLE "a""b" WITH ')
    assert sqls[1].startswith('COMMENT ON ROLE "a""b" IS ')
    assert sqls[2] == 'GRANT "a""b" TO CURRENT_USER'
    state = role_state(comment=HOSTILE.owner_marker, createdb=True)
    assert render(plans.plan_role(HOSTILE, state, None, SUPERUSER)) == ['ALTER ROLE "a""b" WITH NOCREATEDB']


def test_hostile_database_name_is_quoted():
    sqls = render(plans.plan_database(HOSTILE, None, None))
    assert sqls[0].startswith('CREATE DATABASE "d""; DROP DATABASE x; --" WITH OWNER "a""b" ')
    assert sqls[1].startswith('COMMENT ON DATABASE "d""; DROP DATABASE x; --" IS ')
    assert sqls[2] == 'REVOKE ALL ON DATABASE "d""; DROP DATABASE x; --" FROM PUBLIC'
    drop = render(plans.plan_drop(HOSTILE, role_state(comment=HOSTILE.owner_marker),
                                  db_state(comment=HOSTILE.owner_marker)))
    assert drop == ['DROP DATABASE IF EXISTS "d""; DROP DATABASE x; --" WITH (FORCE)', 'DROP ROLE IF EXISTS "a""b"']


def test_uppercase_identifier_is_quoted_to_keep_its_case():
    spec = dataclasses.replace(SPEC, role="MixedCase", database="Db")
    assert render(plans.plan_database(spec, None, None))[0].startswith('CREATE DATABASE "Db" WITH OWNER "MixedCase" ')


def test_owner_marker_with_a_quote_is_one_literal():
    spec = dataclasses.replace(SPEC, name="it's")
    comment = render(plans.plan_role(spec, None, VERIFIER, SUPERUSER))[1]
    assert comment.endswith(f"IS {quote_literal(spec.owner_marker)}")
    assert "it''s" in comment


# ---- plan_database -----------------------------------------------------------------------

def test_new_database_is_created_owned_from_template0_then_marked_and_closed():
    steps = plans.plan_database(SPEC, None, role_state())
    sqls = render(steps)
    assert len(steps) == 3
    assert sqls[0].startswith('CREATE DATABASE "mlflow_team_a" WITH OWNER "mlflow_team_a" TEMPLATE template0')
    assert "ENCODING 'UTF8'" in sqls[0]
    assert sqls[1] == f'COMMENT ON DATABASE "mlflow_team_a" IS {quote_literal(SPEC.owner_marker)}'
    assert sqls[2] == 'REVOKE ALL ON DATABASE "mlflow_team_a" FROM PUBLIC'
    assert [step.autocommit for step in steps] == [True, False, False]


@pytest.mark.parametrize("role", [None, role_state()])
def test_database_owned_by_someone_else_is_taken(role):
    with pytest.raises(errors.DatabaseTaken) as info:
        plans.plan_database(SPEC, DatabaseState(owner="alice", comment=None, public_can_connect=True), role)
    assert "'alice'" in info.value.message
    assert "mlflow_team_a" in info.value.message
    assert info.value.reason == "DatabaseOwnedByOtherRole"


def test_database_of_another_backend_is_taken():
    other_marker = make_spec(namespace="other-ns").owner_marker
    with pytest.raises(errors.DatabaseTaken):
        plans.plan_database(SPEC, DatabaseState(owner="bob", comment=other_marker, public_can_connect=False),
                            role_state())


def test_converged_database_gives_an_empty_plan():
    assert plans.plan_database(SPEC, db_state(), role_state()) == []


def test_ours_with_a_drifted_owner_is_given_back():
    sqls = render(plans.plan_database(SPEC, db_state(owner="mallory"), role_state()))
    assert sqls == ['ALTER DATABASE "mlflow_team_a" OWNER TO "mlflow_team_a"']


def test_public_connect_drift_is_revoked():
    sqls = render(plans.plan_database(SPEC, db_state(public_can_connect=True), role_state()))
    assert sqls == ['REVOKE ALL ON DATABASE "mlflow_team_a" FROM PUBLIC']


def test_crash_before_comment_is_recovered_by_owner():
    # CREATE DATABASE committed, COMMENT not: the owner is our (marked) role, so it is ours; mark and close it.
    steps = plans.plan_database(SPEC, db_state(comment=None, public_can_connect=True), role_state())
    assert render(steps) == [f'COMMENT ON DATABASE "mlflow_team_a" IS {quote_literal(SPEC.owner_marker)}',
                             'REVOKE ALL ON DATABASE "mlflow_team_a" FROM PUBLIC']
    assert not any(step.autocommit for step in steps)


@pytest.mark.parametrize("role", [None, role_state(comment=None), role_state(comment="created by the DBA"),
                                  role_state(comment=make_spec(namespace="other-ns").owner_marker)])
def test_database_owned_by_a_foreign_role_of_the_same_name_is_taken(role):
    with pytest.raises(errors.DatabaseTaken) as info:
        plans.plan_database(SPEC, db_state(comment=None), role)
    assert "mlflow_team_a" in info.value.message


def test_is_ours():
    ours = role_state()
    assert plans.is_ours(SPEC, db_state(), ours)
    assert plans.is_ours(SPEC, db_state(owner="someone"), ours)
    assert plans.is_ours(SPEC, db_state(comment=None), ours)
    assert not plans.is_ours(SPEC, db_state(owner="someone", comment=None), ours)
    assert not plans.is_ours(SPEC, db_state(owner="someone", comment="managed by trackop for TrackingBackend x/y"),
                             ours)
    # Our marker on the database is enough, whatever the role.
    assert plans.is_ours(SPEC, db_state(), None)
    assert plans.is_ours(SPEC, db_state(), role_state(comment="created by the DBA"))
    # The owner fallback needs our marker on the role: a same-named stranger's role proves nothing.
    assert not plans.is_ours(SPEC, db_state(comment=None), None)
    assert not plans.is_ours(SPEC, db_state(comment=None), role_state(comment=None))
    assert not plans.is_ours(SPEC, db_state(comment=None), role_state(comment="created by the DBA"))
    assert not plans.is_ours(SPEC, db_state(comment=None), role_state(comment=make_spec(namespace="x").owner_marker))


def test_role_is_ours():
    assert plans.role_is_ours(SPEC, role_state())
    assert not plans.role_is_ours(SPEC, None)
    assert not plans.role_is_ours(SPEC, role_state(comment=None))
    assert not plans.role_is_ours(SPEC, role_state(comment=make_spec(namespace="other-ns").owner_marker))


# ---- plan_drop ---------------------------------------------------------------------------

def test_drop_everything_ours():
    steps = plans.plan_drop(SPEC, role_state(), db_state())
    assert render(steps) == ['DROP DATABASE IF EXISTS "mlflow_team_a" WITH (FORCE)',
                             'DROP ROLE IF EXISTS "mlflow_team_a"']
    assert [step.autocommit for step in steps] == [True, False]


def test_drop_nothing_when_nothing_exists():
    assert plans.plan_drop(SPEC, None, None) == []


def test_drop_leaves_what_is_not_ours():
    foreign_role = role_state(comment="created by the DBA")
    foreign_db = DatabaseState(owner="alice", comment=None, public_can_connect=True)
    assert plans.plan_drop(SPEC, foreign_role, foreign_db) == []
    assert render(plans.plan_drop(SPEC, foreign_role, db_state())) == [
        'DROP DATABASE IF EXISTS "mlflow_team_a" WITH (FORCE)']
    assert render(plans.plan_drop(SPEC, role_state(), foreign_db)) == ['DROP ROLE IF EXISTS "mlflow_team_a"']


def test_drop_leaves_another_backends_objects():
    other = make_spec(namespace="other-ns")
    assert plans.plan_drop(other, role_state(), DatabaseState("alice", SPEC.owner_marker, False)) == []


def test_drop_spares_a_database_owned_by_a_foreign_role_of_the_same_name():
    foreign_role = role_state(comment="created by the DBA")
    foreign_db = DatabaseState(owner=SPEC.role, comment=None, public_can_connect=True)
    assert plans.plan_drop(SPEC, foreign_role, foreign_db) == []
    assert plans.plan_drop(SPEC, None, foreign_db) == []


def test_drop_takes_an_unmarked_database_owned_by_our_role():
    # The crash between CREATE DATABASE and its COMMENT: our marked role owns it, so it is ours to drop.
    steps = plans.plan_drop(SPEC, role_state(), db_state(comment=None))
    assert render(steps) == ['DROP DATABASE IF EXISTS "mlflow_team_a" WITH (FORCE)',
                             'DROP ROLE IF EXISTS "mlflow_team_a"']
