"""The Secrets a reconcile reads first: the PostgreSQL admin's and the artifact store's."""

from __future__ import annotations

from ...api import conditions as cond
from ...api.v1alpha1 import ENGINE_CNPG
from ...kube.client import Kube
from ..outcome import Context, StepFailed


def admin_credentials(ctx: Context, kube: Kube) -> tuple[str, str]:
    """(username, password) of the PostgreSQL admin, from the admin (or superuser) Secret."""
    spec = ctx.spec
    ref = f"{spec.namespace}/{spec.postgres.admin_secret}"
    data = kube.read_secret(spec.namespace, spec.postgres.admin_secret)
    if data is None:
        if spec.managed is not None:
            maker = "CloudNativePG" if spec.managed.engine == ENGINE_CNPG else "trackop"
            raise StepFailed(cond.DATABASE_READY, "AdminSecretMissing",
                             f"the managed server's superuser Secret {ref} (made by {maker}) is gone: restore "
                             "it, or delete the server's volume to start afresh", 15)
        raise StepFailed(cond.DATABASE_READY, "AdminSecretMissing",
                         f"admin Secret {ref} not found: create it with keys username and password "
                         "(spec.postgres.external.adminSecretRef)", 15)
    missing = [k for k in ("username", "password") if not data.get(k)]
    if missing:
        raise StepFailed(cond.DATABASE_READY, "AdminSecretInvalid",
                         f"admin Secret {ref} lacks key(s) {', '.join(missing)}: add them", 15)
    ctx.secrets.add(data["password"])
    ctx.admin_login = (data["username"], data["password"])
    return data["username"], data["password"]


def bucket_keys(ctx: Context, kube: Kube) -> tuple[tuple[str, ...] | None, StepFailed | None]:
    """The artifact store's credentials from the user's Secret, in ``credential_keys``
    order; a problem is reported at the artifacts step, so a missing Secret does not
    hold the database back."""
    store = ctx.spec.artifacts
    if store is None or store.credentials_secret is None:
        return None, None
    ref = f"{ctx.spec.namespace}/{store.credentials_secret}"
    data = kube.read_secret(ctx.spec.namespace, store.credentials_secret)
    if data is None:
        return None, StepFailed(cond.ARTIFACTS_READY, "BucketSecretMissing",
                                f"Secret {ref} ({store.field}.credentialsSecretRef) not found: create it "
                                f"with key(s) {', '.join(store.credential_keys)}", 15)
    missing = [k for k in store.credential_keys if not data.get(k)]
    if missing:
        return None, StepFailed(cond.ARTIFACTS_READY, "BucketSecretInvalid",
                                f"Secret {ref} lacks key(s) {', '.join(missing)}: add them", 15)
    values = tuple(data[k] for k in store.credential_keys)
    ctx.secrets.update(values)
    return values, None
