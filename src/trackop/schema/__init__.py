"""MLflow's schema, applied by MLflow's own Alembic migrations, in-process or in a child.

The operator never carries DDL of its own: it runs the migration scripts shipped with the
MLflow version it bundles (``mlflow-skinny``), exactly as ``mlflow db upgrade`` would, and
refuses databases that a newer MLflow already migrated (Alembic cannot downgrade them, and
an MLflow client refuses a schema whose head it does not know).

- ``revisions``: the bundled MLflow version and its Alembic revision ids, read out of the
  migration scripts' source (cheap: no MLflow, no Alembic);
- ``migration``: ``migrate`` (in-process, under a per-database advisory lock),
  ``current_revision`` and ``preload``;
- ``child``: ``migrate_in_subprocess``, the same migration in a child Python process;
- ``errors``: the two errors, and their messages redacted of the URL and password.

Importing any of them is cheap; only running a migration imports MLflow.
"""
