"""MLflow's schema at the target revision: migrated in the operator (Inline) or by a Job
running ``mlflow db upgrade`` in the MLflow image. Condition: SchemaReady."""

from __future__ import annotations

from kubernetes.client import ApiException

from ...api import conditions as cond
from ...api.policy import Policy, migration_refusal
from ...kube.client import Kube
from ...kube.errors import refusal_message
from ...redaction import redact
from ...schema import migration, revisions
from ...schema.errors import SchemaMigrationError, SchemaNewerThanTarget
from ...specs.connection_secret import database_uri
from ...specs.migration_job import migration_job
from ..outcome import Context, StepFailed


def ensure(ctx: Context, kube: Kube, password: str, current: str | None,
           policy: Policy = Policy()) -> tuple[str, str]:
    """(revision, message); ``current`` is the revision read while checking the role's login."""
    spec = ctx.spec
    url = database_uri(spec, password, ctx.reach)
    if spec.migration == "Job":
        return _by_job(ctx, kube, current, policy)
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


def _by_job(ctx: Context, kube: Kube, current: str | None, policy: Policy) -> tuple[str, str]:
    spec = ctx.spec
    previous = ctx.previous_status.get("schema") or {}
    if current and previous.get("mlflowVersion") == spec.mlflow_version and previous.get("revision") == current:
        return current, f"MLflow {spec.mlflow_version} schema at revision {current} (migrated by a Job)"
    name = spec.migration_job
    job = kube.read_job(spec.namespace, name)
    if job is None:
        refusal = migration_refusal(spec, policy)
        if refusal:
            raise StepFailed(cond.SCHEMA_READY, "NotAllowedByPolicy", refusal, 60)
        try:
            kube.create_job(migration_job(spec, ctx.owner))
        except ApiException as exc:
            # An image the API server refuses (spec.schema.image is free text): say so, retry later.
            raise StepFailed(cond.SCHEMA_READY, "MigrationJobRejected",
                             f"the API server refused Job {name}: {refusal_message(exc)}; check spec.schema.image",
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
