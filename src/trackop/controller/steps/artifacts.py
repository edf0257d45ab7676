"""The artifact bucket reachable and writable, and Direct-mode clients' experiments pointed
at it by a trigger in the backend's database. Condition: ArtifactsReady."""

from __future__ import annotations

from ...api import conditions as cond
from ...api.conditions import Condition
from ...api.policy import Policy
from ...artifacts.check import check_store
from ...artifacts.common import ArtifactsError, NotChecked
from ...postgres import artifact_trigger, sessions, statements
from ...redaction import redact
from ..outcome import Context, StepFailed

_POLICY_REASONS = frozenset({"EndpointNotAllowed", "CreateNeedsCredentials"})


def ensure(ctx: Context, password: str, keys: tuple[str, ...] | None, policy: Policy = Policy()) -> Condition:
    spec = ctx.spec
    store = spec.artifacts
    unchecked: Condition | None = None
    try:
        ref = f"{spec.namespace}/{store.credentials_secret}" if store.credentials_secret else None
        for summary in check_store(store, keys, ref, policy):
            ctx.did("BucketCreated", summary)
    except NotChecked as skipped:
        # The policy keeps the operator's own identity out: the server's identity is the check.
        unchecked = Condition(cond.ARTIFACTS_READY, "Unknown", skipped.reason, skipped.message)
    except ArtifactsError as error:
        if error.reason != "NoCredentials" or store.credentials_secret is not None:
            # A policy refusal changes only with the spec (which reconciles at once) or a restart.
            retry = 60 if error.reason in _POLICY_REASONS else 15
            raise StepFailed(cond.ARTIFACTS_READY, error.reason, redact(error.message, ctx.secrets),
                             retry) from None
        # workload identity: only the server's service account can reach it
        unchecked = Condition(cond.ARTIFACTS_READY, "Unknown", "NoCredentialsToCheck",
                              f"{store.uri} is reached through workload identity, which the operator does not "
                              "have: the tracking server's first upload is the check")
    # Direct clients give new experiments a local location unless the database says otherwise.
    with sessions.connect(ctx.reach, spec.role, password, spec.database) as conn:
        plan = artifact_trigger.plan_artifact_trigger(store.uri, artifact_trigger.inspect_artifact_trigger(conn))
        for summary in statements.apply(conn, plan):
            ctx.did("ArtifactLocationReconciled", summary)
    if unchecked is not None:
        return unchecked
    return Condition(cond.ARTIFACTS_READY, "True", "Writable", f"{store.uri} is reachable and writable")
