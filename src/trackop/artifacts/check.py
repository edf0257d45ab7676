"""One entry point per ``spec.artifacts``: its location and its check, whichever store it names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .azure import check_azure
from .gcs import GCSLocation, check_gcs
from .locations import location_for
from .s3 import S3Location, check_s3

if TYPE_CHECKING:
    from ..api.v1alpha1 import ArtifactStore


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
