"""One entry point per ``spec.artifacts``: its location and its check, whichever store it names.

Before any request, the platform admin's policy (``api.policy.Policy``): an endpoint the
tenant named must be allowed, and without a credentials Secret the operator's own cloud
identity is used only when the admin turned that on. Otherwise nothing is sent: the
bucket is left to the identity of the pods that use it (the tracking server's
ServiceAccount), and creating it is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api.policy import Policy, endpoint_refusal
from .azure import check_azure
from .common import ArtifactsError, NotChecked
from .gcs import GCSLocation, check_gcs
from .locations import location_for
from .s3 import S3Location, check_s3

if TYPE_CHECKING:
    from ..api.v1alpha1 import ArtifactStore

_CREATE_FIELD = {"s3": "createBucket", "gcs": "createBucket", "azure": "createContainer"}


def check_store(store: "ArtifactStore", secret_values: tuple[str, ...] | None,
                credentials_ref: str | None, policy: Policy = Policy()) -> list[str]:
    """Check ``spec.artifacts`` with the values of its credentials Secret (in
    ``store.credential_keys`` order), or without a Secret as ``policy`` allows.

    Raises ``ArtifactsError`` (``EndpointNotAllowed``, ``CreateNeedsCredentials``, the
    stores' own reasons) or ``NotChecked`` (``ServerIdentity``) before sending anything
    the policy does not allow."""
    if store.endpoint:
        refusal = endpoint_refusal(f"{store.field}.endpoint", store.endpoint, policy.artifact_endpoints)
        if refusal:
            raise ArtifactsError("EndpointNotAllowed", refusal)
    location = location_for(store)
    anonymous = isinstance(location, GCSLocation) and bool(store.endpoint)  # an emulator: no identity at all
    if secret_values is None and not anonymous and not policy.operator_cloud_identity:
        _refuse_own_identity(store)
    allowed = policy.artifact_endpoints
    if isinstance(location, S3Location):
        access_key, secret_key = secret_values or (None, None)
        return check_s3(location, access_key, secret_key, credentials_ref=credentials_ref)
    value = secret_values[0] if secret_values else None
    if isinstance(location, GCSLocation):
        return check_gcs(location, value, credentials_ref=credentials_ref, allowed_endpoints=allowed)
    return check_azure(location, value, credentials_ref=credentials_ref)


def _refuse_own_identity(store: "ArtifactStore") -> None:
    """No credentials Secret and the operator may not use its own identity: nothing is sent."""
    secret_field = f"{store.field}.credentialsSecretRef"
    if store.create:
        raise ArtifactsError(
            "CreateNeedsCredentials",
            f"{store.field}.{_CREATE_FIELD[store.kind]} needs {secret_field}: the operator creates a "
            "bucket only with the tenant's own credentials, never with its own cloud identity. Create "
            f"the bucket yourself and set {_CREATE_FIELD[store.kind]}: false, or set {secret_field}",
        )
    raise NotChecked(
        "ServerIdentity",
        f"{store.uri} was not checked: there is no {secret_field}, and the operator does not use its own "
        "cloud identity for a tenant's bucket. The tracking server reaches it with its ServiceAccount's "
        "identity (spec.server.serviceAccountName: IRSA, GKE or Azure workload identity; Direct-mode "
        "clients with their own), and its first upload is the check. To have trackop check it, set "
        f"{secret_field}",
    )
