"""The MLflow tracking server's Service and Deployment, rolled out once the schema is at
the target revision; a rollout is polled, fast at first, slowly once it stands still
(specs.progress). Condition: ServerReady."""

from __future__ import annotations

import datetime as dt

from kubernetes.client import ApiException

from ...api import conditions as cond
from ...api.conditions import Condition
from ...api.policy import Policy, server_refusal
from ...kube.client import Kube
from ...kube.errors import refusal_message
from ...specs import tracking_server
from ...specs.progress import false_since, rollout_progress
from ..outcome import Context, StepFailed, progress_failure


def ensure(ctx: Context, kube: Kube, policy: Policy = Policy()) -> Condition:
    """Service and Deployment; only reached once the schema is at the target head, and only
    with an image and ServiceAccount the platform admin's policy allows."""
    spec = ctx.spec
    server = spec.tracking_server
    refusal = server_refusal(spec, policy)
    if refusal:
        raise StepFailed(cond.SERVER_READY, "NotAllowedByPolicy", refusal, 60)
    try:
        changed, _ = kube.apply_if_changed(tracking_server.service(spec, ctx.owner))
        if changed:
            ctx.did("TrackingServerApplied", f"applied Service {spec.tracking_server_name}")
        changed, deployment = kube.apply_if_changed(tracking_server.deployment(spec, ctx.owner))
    except ApiException as exc:
        # spec.server.resources is free-form and serviceAccountName and image are free
        # text in the CRD: what the API server refuses in the Deployment is reported.
        raise StepFailed(cond.SERVER_READY, "ServerRejected",
                         f"the API server refused the tracking server's objects {spec.tracking_server_name}: "
                         f"{refusal_message(exc)}; check spec.server (resources, serviceAccountName, image)",
                         30) from None
    if changed:
        ctx.did("TrackingServerApplied", f"applied Deployment {spec.tracking_server_name} ({server.image})")
    if server.replicas == 0:
        raise StepFailed(cond.SERVER_READY, "ScaledToZero", f"Deployment {spec.tracking_server_name} has 0 replicas",
                         60)
    now = dt.datetime.now(dt.timezone.utc)
    since = false_since(ctx.previous_status.get("conditions"), cond.SERVER_READY)
    progress = rollout_progress(spec, deployment, [], now, since)
    if progress.looks_stalled:
        # Only a rollout that has stood still for a while costs a LIST of its pods.
        pods = kube.pod_bodies(spec.namespace, selector=",".join(
            f"{k}={v}" for k, v in tracking_server.selector_labels(spec).items()))
        progress = rollout_progress(spec, deployment, pods, now, since)
    if not progress.ready:
        raise progress_failure(progress)
    return Condition(cond.SERVER_READY, "True", progress.reason, progress.message)
