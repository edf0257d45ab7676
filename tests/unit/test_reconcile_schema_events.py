"""The Inline schema step announces a migration only when the revision moved."""

from __future__ import annotations

from trackop.api.parsing import parse
from trackop.controller.outcome import Context
from trackop.controller.steps import schema as schema_step
from trackop.schema import migration, revisions

SPEC = {"postgres": {"external": {"host": "db.example", "port": 5432, "adminSecretRef": {"name": "pg-admin"}}}}


def _run_schema(monkeypatch, result: migration.MigrationResult) -> Context:
    monkeypatch.setattr(migration, "migrate", lambda url, **_: result)
    ctx = Context(parse("ns", "team", SPEC), {"metadata": {"uid": "u"}}, {})
    revision, _ = schema_step.ensure(ctx, None, "pw", current=None)
    assert revision == result.after
    return ctx


def test_a_migration_from_empty_is_one_event(monkeypatch):
    ctx = _run_schema(monkeypatch, migration.MigrationResult(None, revisions.head_revision(), 0.7))
    assert [(reason, message.split(" in ")[0]) for _, reason, message in ctx.events] == [
        ("SchemaMigrated", f"migrated the MLflow schema from empty to {revisions.head_revision()}")]


def test_no_event_when_another_reconcile_migrated_first(monkeypatch):
    # The drift timer and the handler of one backend both saw no schema; the second to take
    # the advisory lock found it at head and changed nothing: no "migrated from X to X".
    head = revisions.head_revision()
    ctx = _run_schema(monkeypatch, migration.MigrationResult(head, head, 1.7))
    assert ctx.events == []
