"""Where a backend's artifacts live and what a workload's client needs to reach them (pure).

One location type per store (S3, GCS, Azure Blob), normalised and validated on
construction, with the non-secret env its client reads; ``location_for`` picks the one a
``spec.artifacts`` names. No store client is imported here: the object builders use this
module, the checks (s3.py, gcs.py, azure.py) talk to the stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..api.validation import (
    validate_azure_account_name,
    validate_azure_container_name,
    validate_bucket_name,
    validate_gcs_bucket_name,
)
from .common import normalise_prefix

if TYPE_CHECKING:
    from ..api.v1alpha1 import ArtifactStore


DEFAULT_REGION = "us-east-1"

@dataclass(frozen=True)
class S3Location:
    """A bucket and prefix, and how to reach the store.

    Construction normalises (prefix slashes, endpoint's trailing slash, empty region) and
    validates the bucket name, so every ``S3Location`` names one canonical place.
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # e.g. http://minio.minio.svc:9000; None = AWS
    region: str = DEFAULT_REGION
    create_bucket: bool = False

    def __post_init__(self) -> None:
        validate_bucket_name(self.bucket)
        # Frozen: the normalised values go in through object.__setattr__.
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        object.__setattr__(self, "endpoint", self.endpoint.rstrip("/") if self.endpoint else None)
        object.__setattr__(self, "region", self.region or DEFAULT_REGION)

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix``, or ``s3://bucket`` without a prefix (MLFLOW_ARTIFACT_ROOT)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def s3_client_env(location: S3Location) -> dict[str, str]:
    """The non-secret env a workload's S3 client needs; the keys travel separately, via a Secret."""
    env = {"AWS_DEFAULT_REGION": location.region}
    if location.endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = location.endpoint
    return env


# The Secret key that holds a service-account key file (JSON), as messages name it.
GCS_CREDENTIALS_KEY = "serviceAccountKey"


@dataclass(frozen=True)
class GCSLocation:
    """A Cloud Storage bucket and prefix, and how to reach it.

    ``endpoint`` is only for emulators (fake-gcs-server) and private endpoints; ``None``
    means https://storage.googleapis.com. Without credentials, an endpoint is taken for
    an emulator and reached anonymously; with a service-account key, for a private
    endpoint and reached authenticated. ``project`` is only needed to create the bucket
    (a service-account key names its own project).
    """

    bucket: str
    prefix: str = ""
    create_bucket: bool = False
    endpoint: str | None = None  # e.g. http://fake-gcs.test.svc:4443; None = Google
    project: str | None = None

    def __post_init__(self) -> None:
        validate_gcs_bucket_name(self.bucket)
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        object.__setattr__(self, "endpoint", self.endpoint.rstrip("/") if self.endpoint else None)
        object.__setattr__(self, "project", self.project or None)

    @property
    def uri(self) -> str:
        """``gs://bucket/prefix``, or ``gs://bucket`` without a prefix (what MLflow's GCS repository parses)."""
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"


def gcs_client_env(location: GCSLocation, *, credentials_file: str | None = None) -> dict[str, str]:
    """The non-secret env with which MLflow's ``gs://`` repository reaches ``location``.

    MLflow builds ``google.cloud.storage.Client()`` with no arguments, so everything goes
    through what that client reads from the environment:

    - ``GOOGLE_APPLICATION_CREDENTIALS``: the *path* of a service-account key file. The key
      is secret: the caller mounts the credentials Secret's ``serviceAccountKey`` as a file
      and passes its path as ``credentials_file``; the env then holds only the path.
      Without it the client uses the pod's own identity (GKE workload identity) and, if
      there is none, falls back to anonymous access (MLflow's own fallback).
    - ``STORAGE_EMULATOR_HOST`` (endpoint without credentials): an emulator, reached with
      anonymous credentials, exactly as ``check_gcs`` reaches it.
    - ``API_ENDPOINT_OVERRIDE`` (endpoint with credentials): a private endpoint, reached
      with the credentials (google-cloud-storage calls this variable experimental).
    - ``GOOGLE_CLOUD_PROJECT``: the project, if the location names one (MLflow needs none).
    """
    env: dict[str, str] = {}
    if location.endpoint:
        env["API_ENDPOINT_OVERRIDE" if credentials_file else "STORAGE_EMULATOR_HOST"] = location.endpoint
    if credentials_file:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = credentials_file
    if location.project:
        env["GOOGLE_CLOUD_PROJECT"] = location.project
    return env


# The Secret keys, as messages name them: an account key, or a whole connection string.
AZURE_KEY_KEY = "accountKey"


AZURE_CONNECTION_STRING_KEY = "connectionString"

# The env var MLflow reads the account key from; azure_client_env's template refers to it.
AZURE_KEY_ENV = "AZURE_STORAGE_ACCESS_KEY"


@dataclass(frozen=True)
class AzureLocation:
    """An Azure Blob container and prefix in a storage account, and how to reach it.

    ``endpoint`` is the account's blob service URL, only for emulators (Azurite:
    ``http://host:10000/<account>``) and private endpoints; ``None`` means
    ``https://<account>.blob.core.windows.net``.
    """

    container: str
    prefix: str
    account: str
    create_container: bool = False
    endpoint: str | None = None

    def __post_init__(self) -> None:
        validate_azure_container_name(self.container)
        validate_azure_account_name(self.account)
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        object.__setattr__(self, "endpoint", self.endpoint.rstrip("/") if self.endpoint else None)

    @property
    def uri(self) -> str:
        """``wasbs://container@account.blob.core.windows.net/prefix``: the form MLflow's
        Azure repository parses. With an endpoint, the host part only names the account:
        MLflow then connects through ``AZURE_STORAGE_CONNECTION_STRING``."""
        base = f"wasbs://{self.container}@{self.account}.blob.core.windows.net"
        return f"{base}/{self.prefix}" if self.prefix else base

    @property
    def account_url(self) -> str:
        return self.endpoint or f"https://{self.account}.blob.core.windows.net"


def azure_connection_string(location: AzureLocation, account_key: str) -> str:
    """The connection string for ``location`` with ``account_key``: a secret, for a Secret."""
    scheme = urlsplit(location.account_url).scheme or "https"
    return (f"DefaultEndpointsProtocol={scheme};AccountName={location.account};"
            f"AccountKey={account_key};BlobEndpoint={location.account_url};")


def azure_client_env(location: AzureLocation) -> dict[str, str]:
    """The non-secret env with which MLflow's ``wasbs://`` repository reaches ``location``.

    MLflow reads, in this order: ``AZURE_STORAGE_CONNECTION_STRING``, else
    ``AZURE_STORAGE_ACCESS_KEY`` (then it connects to ``https://<account>.blob.core.windows.net``,
    the account taken from the URI), else ``DefaultAzureCredential`` (needs azure-identity,
    which neither trackop nor ``mlflow-skinny`` installs).

    The caller must add ``AZURE_STORAGE_ACCESS_KEY`` from the credentials Secret's
    ``accountKey`` (a ``secretKeyRef``) **before** these entries:

    - without an endpoint this returns ``{}``: the key is all MLflow needs;
    - with an endpoint (Azurite, a private endpoint) MLflow can only be pointed there by a
      connection string, so this returns ``AZURE_STORAGE_CONNECTION_STRING`` with
      ``$(AZURE_STORAGE_ACCESS_KEY)`` in place of the key. Kubernetes expands that from the
      earlier variable, so the key never appears in the pod spec. Outside Kubernetes,
      use ``azure_connection_string`` instead.

    If the Secret holds a whole ``connectionString`` instead of a key, set
    ``AZURE_STORAGE_CONNECTION_STRING`` from it and drop this function's entry.
    """
    if not location.endpoint:
        return {}
    return {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string(location, f"$({AZURE_KEY_ENV})")}


Location = S3Location | GCSLocation | AzureLocation

def location_for(store: "ArtifactStore") -> Location:
    """The checkable location of ``spec.artifacts`` (whichever store it names)."""
    if store.kind == "s3":
        return S3Location(store.bucket, store.prefix, store.endpoint, store.region, store.create)
    if store.kind == "gcs":
        return GCSLocation(store.bucket, store.prefix, store.create, store.endpoint, store.project)
    return AzureLocation(store.bucket, store.prefix, store.account, store.create, store.endpoint)


