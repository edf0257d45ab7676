"""One entry point per ``spec.artifacts``: its location and its check, whichever store it names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .azure import AzureLocation, check_azure
from .gcs import GCSLocation, check_gcs
from .s3 import S3Location, check_s3

if TYPE_CHECKING:
    from ..api.v1alpha1 import ArtifactStore

Location = S3Location | GCSLocation | AzureLocation


def location_for(store: "ArtifactStore") -> Location:
    """The checkable location of ``spec.artifacts`` (whichever store it names)."""
    if store.kind == "s3":
        return S3Location(store.bucket, store.prefix, store.endpoint, store.region, store.create)
    if store.kind == "gcs":
        return GCSLocation(store.bucket, store.prefix, store.create, store.endpoint, store.project)
    return AzureLocation(store.bucket, store.prefix, store.account, store.create, store.endpoint)


def check_store(store: "ArtifactStore", secret_values: tuple[str, ...] | None,
                credentials_ref: str | None) -> list[str]:
    """Check ``spec.artifacts`` with the values of its credentials Secret (in
    ``store.credential_keys`` order), or ambient credentials when there is no Secret."""
    location = location_for(store)
    if isinstance(location, S3Location):
        access_key, secret_key = secret_values or (None, None)
        return check_s3(location, access_key, secret_key, credentials_ref=credentials_ref)
    value = secret_values[0] if secret_values else None
    if isinstance(location, GCSLocation):
        return check_gcs(location, value, credentials_ref=credentials_ref)
    return check_azure(location, value, credentials_ref=credentials_ref)
