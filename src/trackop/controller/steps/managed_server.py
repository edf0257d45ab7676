"""``spec.postgres.managed``: the server trackop deploys (StatefulSet or CloudNativePG Cluster),
its superuser Secret, and where the operator reaches it. Condition: PostgresReady."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import ApiException

from ...api import conditions as cond
from ...api.conditions import Condition
from ...api.v1alpha1 import (
    BACKEND_LABEL,
    ENGINE_CNPG,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    BackendSpec,
    PostgresEndpoint,
)
from ...kube.client import Kube
from ...kube.errors import refusal_message
from ...settings import MANAGED_ADDRESS_POD
from ...specs import managed_server, managed_server_status
from ...specs.progress import Progress, false_since
from ..outcome import Context, StepFailed, progress_failure
from ..passwords import generate_password


def ensure(ctx: Context, kube: Kube, managed_address: str) -> Condition:
    """Deploy (or keep) the backend's own server and wait until it is ready; then point
    ``ctx.reach`` at it. Everything after this is the external-server path."""
    spec = ctx.spec
    server = spec.managed
    settings = managed_server.parameters(spec)
    shortfall = managed_server_status.budget_shortfall(spec, settings)
    if shortfall is not None:
        # Checked before the server is restarted with fewer connections than the stack needs.
        raise StepFailed(cond.TUNING_APPLIED, "MaxConnectionsTooLow", shortfall.message, 300)
    try:
        if server.engine == ENGINE_CNPG:
            progress = _cnpg_cluster(ctx, kube, settings)
        else:
            progress = _statefulset(ctx, kube, settings)
    except ApiException as exc:
        if exc.status is None or exc.status >= 500 or exc.status in (401, 403, 409):
            raise  # API trouble: the operator retries soon
        raise StepFailed(cond.POSTGRES_READY, "ManagedServerRejected",
                         f"the API server refused the managed PostgreSQL's objects {server.name}: "
                         f"{refusal_message(exc)}; check spec.postgres.managed (image, storage, resources)",
                         30) from None
    if not progress.ready:
        raise progress_failure(progress)
    ctx.reach = _reach(spec, kube, managed_address)
    return Condition(cond.POSTGRES_READY, "True", progress.reason, progress.message)


def _ours(spec: BackendSpec, body: Mapping[str, Any]) -> bool:
    """Made by trackop for a backend of this name (this one, or one before it that was retained)."""
    found = (body.get("metadata") or {}).get("labels") or {}
    return found.get(MANAGED_BY_LABEL) == MANAGED_BY and found.get(BACKEND_LABEL) == spec.name


def _container_args(statefulset: Mapping[str, Any]) -> list[str]:
    containers = (((statefulset.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return list(containers[0].get("args") or []) if containers else []


def _statefulset(ctx: Context, kube: Kube, settings: Mapping[str, str]) -> Progress:
    spec = ctx.spec
    name = spec.managed.name
    _superuser_secret(ctx, kube)
    before, _ = _apply_owned(spec, kube, managed_server.service(spec, ctx.owner))
    if before is None:
        ctx.did("PostgresDeployed", f"created Service {spec.managed.service}")
    before, after = _apply_owned(spec, kube, managed_server.statefulset(spec, ctx.owner, settings))
    if before is None:
        ctx.did("PostgresDeployed", f"created StatefulSet {name} running {spec.managed.image}")
    else:
        old = managed_server.parameters_from_args(_container_args(before))
        new = managed_server.parameters_from_args(_container_args(after))
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        removed = sorted(set(old) - set(new))
        if changed or removed:
            shown = ", ".join([f"{k}={v}" for k, v in sorted(changed.items())] + [f"{k} reset" for k in removed])
            ctx.did("PostgresRestarting", f"restarting PostgreSQL ({name}) to apply {shown}")
    return _with_pods(ctx, after, managed_server_status.statefulset_progress,
                      lambda: kube.pod_bodies(spec.namespace, name=managed_server.pod_name(spec)))


def _apply_owned(spec: BackendSpec, kube: Kube, wanted: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Server-side apply one of a managed server's objects: (before, or None if new; after).
    One of that name that trackop did not make for this backend is never taken over."""
    before = kube.read_object(wanted)
    if before is not None and not _ours(spec, before):
        kind, name = wanted["kind"], wanted["metadata"]["name"]
        raise StepFailed(cond.POSTGRES_READY, "ManagedServerNameTaken",
                         f"{kind} {name} exists and was not made by trackop for this backend: rename the "
                         f"TrackingBackend or remove that {kind}; trackop never takes over what it did not make",
                         60)
    return before, kube.apply(wanted)


def _superuser_secret(ctx: Context, kube: Kube) -> None:
    """The StatefulSet engine's superuser Secret: generated once, adopted when an earlier
    backend of this name left it behind (deletionPolicy Retain kept its data too)."""
    spec = ctx.spec
    name = spec.managed.superuser_secret
    found = kube.read_secret_and_owners(spec.namespace, name)
    if found is None:
        password = generate_password()
        ctx.secrets.add(password)
        try:
            kube.create_secret(managed_server.superuser_secret(spec, password, ctx.owner))
            ctx.did("SuperuserSecretCreated", f"created Secret {name} for the managed server's superuser")
        except ApiException as exc:
            if exc.status != 409:
                raise  # 409: a concurrent reconcile made it; its password is the one
        return
    data, owners = found
    if not data.get("username") or not data.get("password"):
        raise StepFailed(cond.POSTGRES_READY, "SuperuserSecretInvalid",
                         f"Secret {spec.namespace}/{name} lacks username or password: restore them (the server "
                         "was initialised with them) or delete the Secret and the volume to start afresh", 60)
    ctx.secrets.add(data["password"])
    if ctx.owner["metadata"]["uid"] not in owners:
        body = managed_server.superuser_secret(spec, data["password"], ctx.owner)
        body["stringData"]["username"] = data["username"]
        kube.update_secret(body)
        ctx.did("SuperuserSecretAdopted", f"adopted Secret {name} kept from an earlier backend of this name")


def _cnpg_cluster(ctx: Context, kube: Kube, settings: Mapping[str, str]) -> Progress:
    spec = ctx.spec
    name = spec.managed.name
    try:
        before, after = _apply_owned(spec, kube, managed_server.cnpg_cluster(spec, ctx.owner, settings))
    except ApiException as exc:
        if exc.status != 404:
            raise
        raise StepFailed(cond.POSTGRES_READY, "CloudNativePGNotInstalled",
                         f"engine CloudNativePG needs CloudNativePG's CRDs ({managed_server.CNPG_CRD}), which this "
                         "cluster does not have: install the CloudNativePG operator, or use engine StatefulSet",
                         15) from None
    if before is None:
        ctx.did("PostgresDeployed", f"created CloudNativePG Cluster {name} ({spec.managed.instances} "
                                    f"instance(s), {spec.managed.image})")
    elif (before.get("spec") or {}).get("postgresql", {}).get("parameters") != \
            (after.get("spec") or {}).get("postgresql", {}).get("parameters"):
        ctx.did("PostgresRestarting", f"updated the parameters of CloudNativePG Cluster {name}; CloudNativePG "
                                      "restarts the instances if a parameter needs it")
    return _with_pods(ctx, after, managed_server_status.cluster_progress,
                      lambda: kube.pod_bodies(spec.namespace, selector=f"cnpg.io/cluster={name}"))


def _with_pods(ctx: Context, body: Mapping[str, Any], verdict: Callable[..., Progress],
               read_pods: Callable[[], list[dict[str, Any]]]) -> Progress:
    """The verdict on the server object; when it is not ready, again with its pods (what
    they wait for) and since when PostgresReady is False (how long it has stood still)."""
    progress = verdict(ctx.spec, body)
    if progress.ready:
        return progress
    return verdict(ctx.spec, body, read_pods(),
                   false_since(ctx.previous_status.get("conditions"), cond.POSTGRES_READY),
                   dt.datetime.now(dt.timezone.utc))


def _reach(spec: BackendSpec, kube: Kube, managed_address: str) -> PostgresEndpoint:
    """Where the operator connects: the Service (in the cluster), or the ready pod's IP."""
    if managed_address != MANAGED_ADDRESS_POD:
        return spec.postgres
    selector = managed_server.primary_pod_selector(spec)
    ip = kube.pod_ip(spec.namespace, name=None if selector else managed_server.pod_name(spec), selector=selector)
    if not ip:
        raise StepFailed(cond.POSTGRES_READY, "Starting",
                         f"the managed PostgreSQL {spec.managed.name} has no ready pod with an IP yet", 3,
                         backoff=False)
    return dataclasses.replace(spec.postgres, host=ip)
