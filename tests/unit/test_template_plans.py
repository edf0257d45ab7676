"""The template database's pure parts: names, markers, verdicts and plans (no database), and
the schema step's Events for a clone (trackop.postgres, trackop.controller.steps)."""

from __future__ import annotations

import dataclasses

import pytest

from trackop.api.parsing import parse
from trackop.controller.outcome import Context
from trackop.controller.steps import schema as schema_step
from trackop.controller.steps import template as template_step
from trackop.postgres import statements, templates
from trackop.postgres.catalog import AdminPrivileges
from trackop.postgres.templates import (
    TemplateDatabase,
    TemplateRole,
    TemplateState,
    TemplateUnavailable,
)
from trackop.schema import migration, revisions

REV = "1b5f0d9ad7c1"
SUPERUSER = AdminPrivileges(superuser=True, createdb=True, createrole=True)
CREATOR = AdminPrivileges(superuser=False, createdb=True, createrole=True)
SPEC = parse("ml-platform", "team-a", {"postgres": {
    "external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}},
    "database": "mlflow_team_a", "role": "mlflow_team_a"}})


def render(steps: list[statements.Statement]) -> list[str]:
    return [step.query.as_string(None) for step in steps]


def role(**changes) -> TemplateRole:
    ours = TemplateRole(comment=templates.TEMPLATE_ROLE_MARKER, can_login=False, admin_has_privileges=True,
                        shared_objects=0)
    return dataclasses.replace(ours, **changes)


def template(**changes) -> TemplateDatabase:
    ours = TemplateDatabase(name=templates.template_name(REV), owner="admin", comment=templates.template_marker(REV),
                            is_template=True, admin_has_owner_privileges=True)
    return dataclasses.replace(ours, **changes)


def build(**changes) -> TemplateDatabase:
    ours = TemplateDatabase(name=templates.template_build_name(REV), owner="admin",
                            comment=templates.template_build_marker(REV), is_template=False,
                            admin_has_owner_privileges=True)
    return dataclasses.replace(ours, **changes)


def state(**changes) -> TemplateState:
    return dataclasses.replace(TemplateState(REV, "admin", None, None, None), **changes)


# ---- names and markers ------------------------------------------------------------------------

def test_names_are_per_revision_and_distinct_from_backends():
    assert templates.template_name(REV) == f"trackop_mlflow_{REV}"
    assert templates.template_build_name(REV) == f"trackop_mlflow_{REV}_build"
    assert len(templates.template_build_name(REV)) <= 63
    # The fault tests' orphan check finds backends by this marker: a template never matches it.
    assert not templates.template_marker(REV).startswith("managed by trackop for TrackingBackend")
    assert REV in templates.template_marker(REV) and "not a backend" in templates.template_marker(REV)
    assert templates.template_marker(REV) != templates.template_build_marker(REV)
    assert templates.template_marker(REV) != templates.template_marker("ffffffffffff")


# ---- the verdict ------------------------------------------------------------------------------

def test_no_template_yet_means_build():
    assert templates.template_ready(state()) is False
    assert templates.template_ready(state(role=role())) is False
    assert templates.template_ready(state(role=role(), build=build())) is False


def test_a_marked_template_with_its_role_is_ready():
    assert templates.template_ready(state(template=template(), role=role())) is True


@pytest.mark.parametrize("comment", [None, "", "a DBA's own", templates.template_build_marker(REV),
                                     templates.template_marker("ffffffffffff")])
def test_a_database_under_the_template_name_without_the_marker_is_never_taken_over(comment):
    with pytest.raises(TemplateUnavailable, match="was not made by trackop"):
        templates.template_ready(state(template=template(comment=comment), role=role()))


@pytest.mark.parametrize("comment", [None, "someone's role"])
def test_a_role_under_the_template_role_name_is_never_taken_over(comment):
    with pytest.raises(TemplateUnavailable, match="never takes a role over"):
        templates.template_ready(state(template=template(), role=role(comment=comment)))
    with pytest.raises(TemplateUnavailable):
        templates.check_template_role(role(comment=comment))


def test_no_clone_while_the_template_role_owns_a_shared_object():
    # REASSIGN OWNED would hand that database (or tablespace) to the backend's role.
    with pytest.raises(TemplateUnavailable, match="REASSIGN OWNED"):
        templates.template_ready(state(template=template(), role=role(shared_objects=1)))
    with pytest.raises(TemplateUnavailable, match="REASSIGN OWNED"):
        templates.template_ready(state(role=role(shared_objects=2)))


def test_a_template_without_its_role_is_reported():
    with pytest.raises(TemplateUnavailable, match="does not"):
        templates.template_ready(state(template=template()))


# ---- the role ---------------------------------------------------------------------------------

def test_a_new_template_role_is_nologin_marked_and_granted_to_a_non_superuser_admin():
    sqls = render(templates.plan_template_role(None, CREATOR))
    assert sqls == [
        'CREATE ROLE "trackop_template" WITH NOLOGIN NOCREATEDB NOCREATEROLE',
        f"COMMENT ON ROLE \"trackop_template\" IS '{templates.TEMPLATE_ROLE_MARKER.replace(chr(39), chr(39) * 2)}'",
        'GRANT "trackop_template" TO CURRENT_USER',
    ]
    assert not any(step.autocommit for step in templates.plan_template_role(None, CREATOR))


def test_a_superuser_admin_needs_no_membership():
    assert not any("GRANT" in s for s in render(templates.plan_template_role(None, SUPERUSER)))
    assert templates.plan_template_role(role(admin_has_privileges=False), SUPERUSER) == []


def test_another_admin_is_granted_the_existing_role_and_nothing_else():
    assert render(templates.plan_template_role(role(admin_has_privileges=False), CREATOR)) == [
        'GRANT "trackop_template" TO CURRENT_USER']
    assert templates.plan_template_role(role(), CREATOR) == []


def test_a_template_role_given_login_is_restored_to_nologin():
    assert render(templates.plan_template_role(role(can_login=True), CREATOR)) == [
        'ALTER ROLE "trackop_template" WITH NOLOGIN']


# ---- the build ----------------------------------------------------------------------------------

def test_a_build_starts_from_an_empty_database_owned_by_the_admin():
    steps = templates.plan_template_build(state(role=role()))
    sqls = render(steps)
    name = templates.template_build_name(REV)
    assert sqls[0] == f"CREATE DATABASE \"{name}\" WITH TEMPLATE template0 ENCODING 'UTF8'"
    assert "OWNER" not in sqls[0]  # the admin's: never the template role's (REASSIGN OWNED would move it)
    assert steps[0].autocommit
    assert sqls[1].startswith(f'COMMENT ON DATABASE "{name}" IS ')
    assert templates.template_build_marker(REV)[:40] in sqls[1]
    assert sqls[2] == f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC'
    assert len(sqls) == 3


def test_a_leftover_build_of_trackops_is_dropped_first():
    for leftover in (build(), build(comment=None)):  # marked, or a crash before its COMMENT
        steps = templates.plan_template_build(state(role=role(), build=leftover))
        assert render(steps)[0] == f'DROP DATABASE IF EXISTS "{templates.template_build_name(REV)}" WITH (FORCE)'
        assert steps[0].autocommit
        assert render(steps)[1].startswith("CREATE DATABASE")


def test_an_unmarked_build_database_of_another_owner_is_not_dropped():
    with pytest.raises(TemplateUnavailable, match="was not made by trackop"):
        templates.plan_template_build(state(build=build(comment=None, owner="someone")))
    with pytest.raises(TemplateUnavailable, match="was not made by trackop"):
        templates.plan_template_build(state(build=build(comment="a DBA's")))


def test_a_leftover_build_the_admin_may_not_drop_is_reported():
    with pytest.raises(TemplateUnavailable, match="may not drop"):
        templates.plan_template_build(state(build=build(owner="other_admin", admin_has_owner_privileges=False)))


def test_the_schema_is_opened_to_the_template_role_only_for_the_migration():
    assert render(templates.plan_template_schema(open_=True)) == ['GRANT CREATE ON SCHEMA public TO "trackop_template"']
    assert render(templates.plan_template_schema(open_=False)) == [
        'REVOKE CREATE ON SCHEMA public FROM "trackop_template"']


def test_publishing_is_one_transaction_that_renames_marks_and_closes():
    steps = templates.plan_template_publish(REV)
    assert not any(step.autocommit for step in steps)  # statements.apply runs them in one transaction
    final, temp = templates.template_name(REV), templates.template_build_name(REV)
    sqls = render(steps)
    assert sqls[0] == f'ALTER DATABASE "{temp}" RENAME TO "{final}"'
    assert sqls[1].startswith(f'COMMENT ON DATABASE "{final}" IS ')
    assert sqls[2] == f'ALTER DATABASE "{final}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false'


def test_set_role_quotes_the_identifier():
    assert templates.set_role('we"ird').as_string(None) == 'SET ROLE "we""ird"'


# ---- the clone ------------------------------------------------------------------------------

def test_the_clone_is_one_create_database_owned_by_the_role():
    step = templates.plan_clone(SPEC, templates.template_name(REV))
    assert step.autocommit
    assert step.query.as_string(None) == (
        f'CREATE DATABASE "mlflow_team_a" WITH OWNER "mlflow_team_a" TEMPLATE "{templates.template_name(REV)}"')
    assert "cloned from template" in step.summary


def test_the_handover_reassigns_from_the_template_role_to_the_backends_role():
    step = templates.plan_handover(SPEC)
    assert not step.autocommit
    assert step.query.as_string(None) == 'REASSIGN OWNED BY "trackop_template" TO "mlflow_team_a"'


def test_identifiers_with_quotes_stay_identifiers():
    odd = parse("ns", "odd", {"postgres": {"external": {"host": "h", "adminSecretRef": {"name": "a"}},
                                               "database": "db_x", "role": "role_x"}})
    assert '"db_x"' in templates.plan_clone(odd, 'tmpl"x').query.as_string(None)
    assert '"tmpl""x"' in templates.plan_clone(odd, 'tmpl"x').query.as_string(None)


def test_the_lock_key_is_a_signed_64_bit_integer_apart_from_the_migration_lock():
    assert -(2 ** 63) <= templates.TEMPLATE_LOCK_KEY < 2 ** 63
    assert templates.TEMPLATE_LOCK_KEY != migration.MIGRATION_LOCK_KEY


# ---- who clones, and the Events -------------------------------------------------------------------

@pytest.mark.parametrize("schema_spec, clones", [
    ({}, True),
    ({"migration": "Job"}, False),
    ({"mlflowVersion": "3.1.0"}, False),
])
def test_only_inline_backends_of_the_bundled_mlflow_clone(schema_spec, clones):
    spec = parse("ns", "b", {"postgres": {"external": {"host": "h", "adminSecretRef": {"name": "a"}}},
                                 "schema": schema_spec})
    assert template_step.clones(spec, schema_templates=True) is clones


def test_a_managed_server_migrates_its_one_database_in_place():
    spec = parse("ns", "b", {"postgres": {"managed": {}}})
    assert template_step.clones(spec, schema_templates=True) is False


def test_templates_can_be_turned_off():
    assert template_step.clones(SPEC, schema_templates=True) is True
    assert template_step.clones(SPEC, schema_templates=False) is False


def _ctx() -> Context:
    return Context(SPEC, {"metadata": {"uid": "u"}}, {})


def test_a_clone_announces_its_schema_as_cloned_and_runs_no_migration(monkeypatch):
    def no_migration(*_, **__):
        raise AssertionError("a clone at head must not be migrated")

    monkeypatch.setattr(migration, "migrate", no_migration)
    ctx = _ctx()
    ctx.cloned = (templates.template_name(revisions.head_revision()), 0.12)
    revision, _ = schema_step.ensure(ctx, None, "pw", current=revisions.head_revision())
    assert revision == revisions.head_revision()
    ((_, reason, message),) = ctx.events
    assert reason == "SchemaMigrated"
    assert message.startswith(f"cloned the MLflow schema at revision {revisions.head_revision()} from template "
                              f"{templates.template_name(revisions.head_revision())} in 0.12s")
    assert "none ran in this database" in message


def test_a_converged_database_gets_no_event():
    ctx = _ctx()
    schema_step.ensure(ctx, None, "pw", current=revisions.head_revision())
    assert ctx.events == []


def test_an_in_place_migration_of_a_new_database_says_why_it_was_not_cloned(monkeypatch):
    monkeypatch.setattr(migration, "migrate",
                        lambda url, **_: migration.MigrationResult(None, revisions.head_revision(), 0.9))
    ctx = _ctx()
    ctx.not_cloned = "database trackop_mlflow_x exists and was not made by trackop"
    schema_step.ensure(ctx, None, "pw", current=None)
    ((_, reason, message),) = ctx.events
    assert reason == "SchemaMigrated" and message.startswith("migrated the MLflow schema from empty")
    assert message.endswith("(not cloned from a template: database trackop_mlflow_x exists and was not made by "
                            "trackop)")
