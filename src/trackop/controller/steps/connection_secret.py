"""The role's password and the connection Secret that carries it (DESIGN.md's keys)."""

from __future__ import annotations

from kubernetes.client import ApiException

from ...api import conditions as cond
from ...kube.client import Kube
from ...specs.connection_secret import connection_secret
from ..outcome import Context, StepFailed
from ..passwords import generate_password


def password(ctx: Context, kube: Kube, bucket_keys: tuple[str, ...] | None,
             lost_race: bool = False) -> tuple[str, dict[str, str]]:
    """The role's password: the user's Secret, else the one already issued, else a new one;
    and the connection Secret's data.

    The connection Secret is written before the role gets the password, so a crash in
    between never leaves a password that exists only in PostgreSQL.
    """
    spec = ctx.spec
    found = kube.read_secret_and_owners(spec.namespace, spec.connection_secret)
    existing, owners = found if found else (None, set())
    if spec.password_secret is not None:
        ref = spec.password_secret
        data = kube.read_secret(spec.namespace, ref.name)
        if data is None or not data.get(ref.key):
            raise StepFailed(cond.DATABASE_READY, "PasswordSecretMissing",
                             f"Secret {spec.namespace}/{ref.name} with key {ref.key!r} not found "
                             "(spec.postgres.passwordSecretRef): create it or remove the reference", 15)
        chosen = data[ref.key]
    elif existing and existing.get("PGPASSWORD"):
        chosen = existing["PGPASSWORD"]
    else:
        chosen = generate_password()
    ctx.secrets.add(chosen)
    body = connection_secret(spec, chosen, ctx.owner, bucket_keys)
    if existing is None:
        try:
            kube.create_secret(body)
        except ApiException as exc:
            if exc.status != 409 or lost_race:
                raise
            # Another reconcile of this backend (the drift timer runs beside the handler)
            # created it between our read and our create: its password is the one.
            return password(ctx, kube, bucket_keys, lost_race=True)
        ctx.did("ConnectionSecretCreated", f"created Secret {spec.connection_secret}")
    elif any(existing.get(k) != v for k, v in body["stringData"].items()) or ctx.owner["metadata"]["uid"] not in owners:
        # Changed keys, or a Secret retained from an earlier backend of this name: adopt it.
        kube.update_secret(body)
        ctx.did("ConnectionSecretUpdated", f"updated Secret {spec.connection_secret}")
    return chosen, body["stringData"]
