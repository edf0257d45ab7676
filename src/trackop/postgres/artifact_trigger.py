"""Direct mode: every experiment's artifacts in the bucket.

A client on a database URI gives new experiments a local artifact location (./mlruns)
unless it is told otherwise. This trigger, in the backend's own database, rewrites a
local location (no URI scheme, or file:) to <artifact root>/<experiment id> as MLflow
writes it, for the Default experiment and every new one, whatever the client's version.
Locations with a scheme (s3://, mlflow-artifacts:/, ...) are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .statements import Statement

ARTIFACT_TRIGGER = "trackop_artifact_location"


def artifact_trigger_body(root: str) -> str:
    return sql.SQL("""
BEGIN
  IF NEW.artifact_location IS NULL
     OR NEW.artifact_location !~ '^[A-Za-z][A-Za-z0-9+.-]*:'
     OR NEW.artifact_location ~* '^file:' THEN
    NEW.artifact_location := {root} || '/' || NEW.experiment_id;
  END IF;
  RETURN NEW;
END
""").format(root=sql.Literal(root.rstrip("/"))).as_string(None)


@dataclass(frozen=True)
class ArtifactTriggerState:
    function_body: str | None
    trigger_exists: bool


def inspect_artifact_trigger(conn: psycopg.Connection) -> ArtifactTriggerState:
    body = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = %s AND pronamespace = 'public'::regnamespace",
        (ARTIFACT_TRIGGER,)).fetchone()
    trigger = conn.execute(
        "SELECT 1 FROM pg_trigger WHERE tgname = %s AND tgrelid = to_regclass('public.experiments')",
        (ARTIFACT_TRIGGER,)).fetchone()
    return ArtifactTriggerState(body[0] if body else None, trigger is not None)


def plan_artifact_trigger(root: str, state: ArtifactTriggerState) -> list[Statement]:
    """Statements (run as the role, owner of MLflow's tables) that install or update the trigger."""
    body = artifact_trigger_body(root)
    name = sql.Identifier(ARTIFACT_TRIGGER)
    steps = []
    if state.function_body != body:
        steps.append(Statement(
            f"set new experiments' artifact location to {root.rstrip('/')}/<experiment id>",
            sql.SQL("CREATE OR REPLACE FUNCTION public.{}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                name, sql.Literal(body)),
        ))
    if not state.trigger_exists:
        steps.append(Statement(
            "installed the artifact location trigger on experiments",
            sql.SQL("CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF artifact_location ON public.experiments "
                    "FOR EACH ROW EXECUTE FUNCTION public.{}()").format(name, name),
        ))
    return steps
