"""Where MLflow's artifacts go: bucket URIs, the env workloads need, and the S3 check.

Deciding is pure (``S3Location``, ``normalise_prefix``, ``validate_bucket_name``,
``s3_client_env``); ``check_s3`` is the one function that talks to S3. It proves what
``ArtifactsReady`` promises: the bucket is reachable with these credentials AND a write
under the prefix succeeds. Its errors carry a condition reason and a message built by
trackop from the S3 error code only: never a key, and never the server's own message
(which may echo request details).

Google Cloud Storage (``GCSLocation``, ``gcs_client_env``, ``check_gcs``) and Azure Blob
(``AzureLocation``, ``azure_client_env``, ``azure_connection_string``, ``check_azure``)
follow the same pattern and the same condition reasons; their SDKs are imported only
when a check runs. A missing Azure container is ``BucketNotFound`` too.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions
from botocore.config import Config

if TYPE_CHECKING:
    from .api.v1alpha1 import ArtifactStore

DEFAULT_REGION = "us-east-1"
BUCKET_FIELD = "spec.artifacts.s3.bucket"
PROBE_PREFIX = ".trackop-probe-"

# Error codes that mean "these credentials are wrong", as opposed to "not allowed".
_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "InvalidClientTokenId",
})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_MISSING_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
# Connection-level failures: the endpoint never answered in time (or at all).
_UNREACHABLE = (
    botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)

# S3 bucket naming rules (general purpose buckets).
_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def normalise_prefix(prefix: str) -> str:
    """``/a//b/`` -> ``a/b``: no leading, trailing or doubled slashes; ``''`` stays ``''``.

    Why: MLflow joins the artifact root and run paths with ``/``, and S3 keys are
    literal, so ``a//b`` and ``a/b`` would be two different, equally valid-looking trees.
    """
    return "/".join(part for part in prefix.split("/") if part)


def validate_bucket_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.s3.bucket`` unless ``name`` follows S3's rules."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{BUCKET_FIELD} {name!r} is not a valid S3 bucket name: {why}")

    if not 3 <= len(name) <= 63:
        raise bad("it must be 3 to 63 characters long")
    if not _BUCKET_CHARS.match(name):
        raise bad(
            "use only lowercase letters, digits, '.' and '-', "
            "and start and end with a letter or digit"
        )
    if ".." in name:
        raise bad("it must not contain two adjacent periods")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        raise bad("it must not be formatted as an IP address")
    if name.startswith(_RESERVED_PREFIXES):
        raise bad(f"names starting with {', '.join(_RESERVED_PREFIXES)} are reserved")
    if name.endswith(_RESERVED_SUFFIXES):
        raise bad(f"names ending with {', '.join(_RESERVED_SUFFIXES)} are reserved")


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


class ArtifactsError(Exception):
    """A failed artifact store check: ``reason`` for the condition, ``message`` says the fix.

    Never holds a key, a secret or the server's raw error text.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _shown_endpoint(endpoint: str | None, region: str = DEFAULT_REGION) -> str:
    """The endpoint for messages, without any ``user:password@`` part."""
    if not endpoint:
        return f"https://s3.{region}.amazonaws.com"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    """The S3 error code. HEAD responses have no body, so botocore only knows the status
    ("403", "404"); MinIO adds the real code in ``x-minio-error-code``, AWS does not."""
    response = exc.response or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if code.isdigit() or not code:
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
        code = headers.get("x-minio-error-code", code) or code
    return code or "Unknown"


def _client(location: S3Location, access_key: str | None, secret_key: str | None,
            timeout: float, credentials_ref: str | None):
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        # One attempt, no retry: a check that fails should say so within ``timeout``.
        # (``max_attempts`` counts retries after the first; ``total_max_attempts`` counts all.)
        retries={"total_max_attempts": 1},
        # S3-compatible stores rarely resolve bucket.host names; AWS prefers virtual hosts.
        s3={"addressing_style": "path"} if location.endpoint else None,
    )
    if access_key is None and secret_key is None:
        session = boto3.session.Session()
        if session.get_credentials() is None:
            raise ArtifactsError(
                "NoCredentials",
                f"no credentialsSecretRef is set and the operator found no credentials of its own, "
                f"so it could not check bucket {location.bucket!r}: a bucket reached through "
                "workload identity (IRSA, GKE/Azure workload identity) is only usable by pods with "
                "that identity. Set spec.artifacts.s3.credentialsSecretRef (keys accessKeyId, "
                "secretAccessKey), or give the operator's ServiceAccount the same access.",
            )
        return session.client("s3", endpoint_url=location.endpoint, region_name=location.region,
                               config=config)
    if not access_key or not secret_key:
        where = f"Secret {credentials_ref}" if credentials_ref else "the credentials Secret"
        raise ArtifactsError(
            "NoCredentials",
            f"{where} must hold both accessKeyId and secretAccessKey (one is missing or empty)",
        )
    try:
        return boto3.client(
            "s3", endpoint_url=location.endpoint, region_name=location.region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config,
        )
    except ValueError:
        # botocore rejects a malformed endpoint URL before any request.
        raise ArtifactsError(
            "ProbeFailed",
            f"spec.artifacts.s3.endpoint {_shown_endpoint(location.endpoint)!r} is not a valid URL "
            "(expected e.g. http://minio.minio.svc:9000)",
        ) from None


# ---- the three failures every store shares, worded once ----------------------------------

def _store_unreachable(shown_endpoint: str, fields: str) -> ArtifactsError:
    return ArtifactsError(
        "EndpointUnreachable",
        f"could not reach {shown_endpoint} (connection refused, DNS, TLS or timeout): check {fields}, "
        "the store's Service and any NetworkPolicy",
    )


def _store_credentials_rejected(credentials_ref: str | None, detail: str, fix: str, *,
                                subject: str = "the credentials", verb: str = "were") -> ArtifactsError:
    where = f"Secret {credentials_ref}" if credentials_ref else "the credentials Secret"
    return ArtifactsError("InvalidCredentials", f"{subject} in {where} {verb} rejected ({detail}): {fix}")


def _store_missing(what: str, create_field: str, where: str = "") -> ArtifactsError:
    return ArtifactsError(
        "BucketNotFound",
        f"{what} does not exist{where}: create it, or set {create_field}: true to let trackop create it",
    )


def _unreachable(location: S3Location) -> ArtifactsError:
    return _store_unreachable(_shown_endpoint(location.endpoint, location.region), "spec.artifacts.s3.endpoint")


def _credentials_rejected(credentials_ref: str | None, code: str) -> ArtifactsError:
    return _store_credentials_rejected(credentials_ref, code, "fix accessKeyId and secretAccessKey")


def _bucket_missing(location: S3Location) -> ArtifactsError:
    return _store_missing(f"bucket {location.bucket!r}", "spec.artifacts.s3.createBucket")


def _create_bucket(s3, location: S3Location, credentials_ref: str | None) -> None:
    kwargs: dict = {"Bucket": location.bucket}
    if location.region != DEFAULT_REGION:
        # us-east-1 is the one region S3 refuses as an explicit LocationConstraint.
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": location.region}
    try:
        s3.create_bucket(**kwargs)
    except _UNREACHABLE:
        raise _unreachable(location) from None
    except botocore.exceptions.ClientError as exc:
        code = _error_code(exc)
        if code == "BucketAlreadyOwnedByYou":
            return  # another reconcile won the race; same outcome
        if code in _CREDENTIAL_CODES:
            raise _credentials_rejected(credentials_ref, code) from None
        hint = {
            "BucketAlreadyExists": "the name is taken by another account: pick another bucket",
            "AccessDenied": "the credentials may not create buckets (s3:CreateBucket): "
                            "create it yourself and set createBucket: false",
            "InvalidRegion": f"the store does not accept region {location.region!r}: "
                             "fix spec.artifacts.s3.region",
            "InvalidLocationConstraint": f"the store does not accept region {location.region!r}: "
                                         "fix spec.artifacts.s3.region",
        }.get(code, "check the store's logs")
        raise ArtifactsError(
            "BucketCreateFailed", f"could not create bucket {location.bucket!r} ({code}): {hint}",
        ) from None


def check_s3(location: S3Location, access_key: str | None, secret_key: str | None, *,
             timeout: float = 5, credentials_ref: str | None = None) -> list[str]:
    """Check the bucket is reachable and writable under the prefix; create it if allowed.

    ``access_key``/``secret_key`` both ``None`` means boto3's default chain (the operator's
    own identity). ``credentials_ref`` (e.g. ``ns/s3-creds``) only names the Secret in
    messages. Returns what changed (``["created bucket X"]`` or ``[]``); raises
    ``ArtifactsError`` otherwise.
    """
    s3 = _client(location, access_key, secret_key, timeout, credentials_ref)
    changes: list[str] = []
    head_denied = False
    try:
        s3.head_bucket(Bucket=location.bucket)
    except _UNREACHABLE:
        raise _unreachable(location) from None
    except botocore.exceptions.ClientError as exc:
        code = _error_code(exc)
        if code in _CREDENTIAL_CODES:
            raise _credentials_rejected(credentials_ref, code) from None
        if code in _MISSING_CODES:
            if not location.create_bucket:
                raise _bucket_missing(location) from None
            _create_bucket(s3, location, credentials_ref)
            changes.append(f"created bucket {location.bucket}")
        elif code in _DENIED_CODES:
            # On AWS a HEAD 403 has no body: bad keys and missing s3:ListBucket look the
            # same. The probe write below answers with a real error code.
            head_denied = True
        else:
            raise ArtifactsError(
                "ProbeFailed", f"checking bucket {location.bucket!r} failed ({code})",
            ) from None

    key = f"{location.prefix}/{PROBE_PREFIX}{secrets.token_hex(8)}" if location.prefix \
        else f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    step = "write"
    try:
        s3.put_object(Bucket=location.bucket, Key=key, Body=b"trackop write probe\n")
        step = "delete"
        s3.delete_object(Bucket=location.bucket, Key=key)
    except _UNREACHABLE:
        raise _unreachable(location) from None
    except botocore.exceptions.ClientError as exc:
        code = _error_code(exc)
        if code in _CREDENTIAL_CODES:
            raise _credentials_rejected(credentials_ref, code) from None
        if code in _MISSING_CODES:
            raise _bucket_missing(location) from None
        if code in _DENIED_CODES:
            action = "s3:PutObject" if step == "write" else "s3:DeleteObject"
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not {step} objects in {location.uri}: grant {action} "
                f"on arn:aws:s3:::{location.bucket}/{location.prefix + '/' if location.prefix else ''}*",
            ) from None
        raise ArtifactsError(
            "ProbeFailed", f"the probe {step} in {location.uri} failed ({code})",
        ) from None

    if head_denied:
        raise ArtifactsError(
            "AccessDenied",
            f"the credentials can write to {location.uri} but may not read bucket "
            f"{location.bucket!r} itself (HeadBucket denied): grant s3:ListBucket on "
            f"arn:aws:s3:::{location.bucket}, which MLflow also needs to list artifacts",
        )
    return changes


# ---- Google Cloud Storage ------------------------------------------------------------------

GCS_BUCKET_FIELD = "spec.artifacts.gcs.bucket"
# The Secret key that holds a service-account key file (JSON), as messages name it.
GCS_CREDENTIALS_KEY = "serviceAccountKey"
_GCS_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
_GCS_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")


def validate_gcs_bucket_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.gcs.bucket`` unless ``name`` follows GCS's rules."""

    def bad(why: str) -> ValueError:
        return ValueError(f"{GCS_BUCKET_FIELD} {name!r} is not a valid Cloud Storage bucket name: {why}")

    if not _GCS_BUCKET_CHARS.match(name):
        raise bad("use only lowercase letters, digits, '-', '_' and '.', "
                  "and start and end with a letter or digit")
    if "." in name:
        if len(name) > 222 or any(not 1 <= len(part) <= 63 for part in name.split(".")):
            raise bad("a dotted name may be up to 222 characters, each dot-separated part 1 to 63")
    elif not 3 <= len(name) <= 63:
        raise bad("it must be 3 to 63 characters long")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        raise bad("it must not be formatted as an IP address")
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        raise bad("names starting with 'goog' or containing 'google' are reserved")


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


def _gcs_shown_endpoint(location: GCSLocation) -> str:
    return _shown_endpoint(location.endpoint) if location.endpoint else "https://storage.googleapis.com"


def _gcs_unreachable(location: GCSLocation) -> ArtifactsError:
    return _store_unreachable(_gcs_shown_endpoint(location), "spec.artifacts.gcs.endpoint")


def _gcs_credentials_rejected(credentials_ref: str | None, what: str) -> ArtifactsError:
    return _store_credentials_rejected(credentials_ref, what,
                                       f"put a valid, enabled key file (JSON) under {GCS_CREDENTIALS_KEY}",
                                       subject="the service-account key", verb="was")


def _gcs_bucket_missing(location: GCSLocation) -> ArtifactsError:
    return _store_missing(f"bucket {location.bucket!r}", "spec.artifacts.gcs.createBucket")


def _gcs_client(location: GCSLocation, credentials_json: str | None, timeout: float,
                credentials_ref: str | None):
    """A storage client and the project it would create buckets in (``None`` if unknown)."""
    import google.auth
    import google.auth.exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import storage
    from google.oauth2 import service_account

    where = f"Secret {credentials_ref}" if credentials_ref else "the credentials Secret"
    project = location.project
    http = None
    if credentials_json is not None:
        if not credentials_json.strip():
            raise ArtifactsError("NoCredentials", f"{where} has an empty {GCS_CREDENTIALS_KEY}")
        try:
            info = json.loads(credentials_json)
            if not isinstance(info, dict) or info.get("type") != "service_account":
                raise ValueError("not a service-account key")
            credentials = service_account.Credentials.from_service_account_info(info, scopes=_GCS_SCOPES)
        except (ValueError, TypeError, KeyError):
            # Never the parser's message: it may quote the key.
            raise ArtifactsError(
                "InvalidCredentials",
                f"{GCS_CREDENTIALS_KEY} in {where} is not a service-account key file "
                "(JSON with \"type\": \"service_account\", client_email and private_key)",
            ) from None
        project = project or credentials.project_id
        # The token request gets the same deadline as the storage calls.
        http = AuthorizedSession(credentials, refresh_timeout=timeout)
    elif location.endpoint:
        credentials = AnonymousCredentials()  # an emulator: no authentication
    else:
        try:
            credentials, default_project = google.auth.default(scopes=_GCS_SCOPES)
        except google.auth.exceptions.DefaultCredentialsError:
            raise ArtifactsError(
                "NoCredentials",
                f"no credentialsSecretRef is set and the operator found no credentials of its own, "
                f"so it could not check bucket {location.bucket!r}: a bucket reached through "
                "workload identity is only usable by pods with that identity. Set "
                f"spec.artifacts.gcs.credentialsSecretRef (key {GCS_CREDENTIALS_KEY}), or give the "
                "operator's ServiceAccount the same access.",
            ) from None
        project = project or default_project
        http = AuthorizedSession(credentials, refresh_timeout=timeout)
    client_options = {"api_endpoint": location.endpoint} if location.endpoint else None
    client = storage.Client(project=project, credentials=credentials, _http=http,
                            client_options=client_options)
    return client, project


def _gcs_error(exc: Exception, location: GCSLocation, credentials_ref: str | None) -> ArtifactsError | None:
    """The transport- and credential-level failures every GCS call can meet, or ``None``."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as gexc

    if isinstance(exc, google.auth.exceptions.TransportError):
        # The token request, not the storage call, found no one to talk to.
        return ArtifactsError(
            "EndpointUnreachable",
            "could not reach the token endpoint to get an access token (the key file's token_uri, "
            "by default https://oauth2.googleapis.com/token): check the operator's egress and any "
            "NetworkPolicy",
        )
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return _gcs_unreachable(location)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return _gcs_credentials_rejected(credentials_ref, "the token request was refused")
    if isinstance(exc, gexc.Unauthorized):
        return _gcs_credentials_rejected(credentials_ref, "401 Unauthorized")
    return None


def _gcs_code(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    return f"{int(code)} {type(exc).__name__}" if isinstance(code, int) else type(exc).__name__


def _gcs_call(fn, location: GCSLocation, credentials_ref: str | None):
    """Run one GCS call; map transport and credential failures, re-raise the rest."""
    try:
        return fn()
    except Exception as exc:
        mapped = _gcs_error(exc, location, credentials_ref)
        if mapped is not None:
            raise mapped from None
        raise


def check_gcs(location: GCSLocation, credentials_json: str | None, *,
              credentials_ref: str | None = None, timeout: float = 5) -> list[str]:
    """Check the bucket is reachable and writable under the prefix; create it if allowed.

    ``credentials_json`` is the service-account key file's content (the Secret's
    ``serviceAccountKey``); ``None`` means the operator's own identity (Application
    Default Credentials) or, with ``location.endpoint`` set, an emulator reached
    anonymously. ``credentials_ref`` only names the Secret in messages. Returns what
    changed (``["created bucket X"]`` or ``[]``); raises ``ArtifactsError`` with the
    reasons of ``check_s3`` otherwise.
    """
    from google.api_core import exceptions as gexc

    client, project = _gcs_client(location, credentials_json, timeout, credentials_ref)
    changes: list[str] = []
    bucket = client.bucket(location.bucket)
    get_denied = False
    try:
        _gcs_call(lambda: client.get_bucket(location.bucket, timeout=timeout, retry=None),
                  location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.NotFound:
        if not location.create_bucket:
            raise _gcs_bucket_missing(location) from None
        _gcs_create_bucket(client, location, project, timeout, credentials_ref)
        changes.append(f"created bucket {location.bucket}")
    except gexc.Forbidden:
        # storage.buckets.get is not in roles/storage.objectAdmin, and MLflow does not
        # need it: what MLflow needs (list, write, delete objects) is checked instead.
        get_denied = True
    except gexc.GoogleAPICallError as exc:
        raise ArtifactsError(
            "ProbeFailed", f"checking bucket {location.bucket!r} failed ({_gcs_code(exc)})",
        ) from None

    if get_denied:
        try:
            _gcs_call(lambda: list(client.list_blobs(location.bucket, prefix=location.prefix or None,
                                                     max_results=1, timeout=timeout, retry=None)),
                      location, credentials_ref)
        except ArtifactsError:
            raise
        except gexc.NotFound:
            raise _gcs_bucket_missing(location) from None
        except gexc.Forbidden:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not list objects in {location.uri}, which MLflow needs: grant "
                f"storage.objects.list on bucket {location.bucket!r} (e.g. roles/storage.objectAdmin)",
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise ArtifactsError(
                "ProbeFailed", f"listing {location.uri} failed ({_gcs_code(exc)})",
            ) from None

    name = f"{location.prefix}/{PROBE_PREFIX}{secrets.token_hex(8)}" if location.prefix \
        else f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    blob = bucket.blob(name)
    step = "write"
    try:
        _gcs_call(lambda: blob.upload_from_string(b"trackop write probe\n", timeout=timeout, retry=None),
                  location, credentials_ref)
        step = "delete"
        _gcs_call(lambda: blob.delete(timeout=timeout, retry=None), location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.NotFound:
        raise _gcs_bucket_missing(location) from None
    except gexc.Forbidden:
        permission = "storage.objects.create" if step == "write" else "storage.objects.delete"
        raise ArtifactsError(
            "AccessDenied",
            f"the credentials may not {step} objects in {location.uri}: grant {permission} on "
            f"bucket {location.bucket!r} (e.g. roles/storage.objectAdmin)",
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise ArtifactsError(
            "ProbeFailed", f"the probe {step} in {location.uri} failed ({_gcs_code(exc)})",
        ) from None
    return changes


def _gcs_create_bucket(client, location: GCSLocation, project: str | None, timeout: float,
                       credentials_ref: str | None) -> None:
    from google.api_core import exceptions as gexc

    if not project:
        raise ArtifactsError(
            "BucketCreateFailed",
            f"could not create bucket {location.bucket!r}: no project to create it in; "
            "set spec.artifacts.gcs.project",
        )
    try:
        _gcs_call(lambda: client.create_bucket(location.bucket, project=project, timeout=timeout,
                                               retry=None),
                  location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.Conflict:
        # Either another reconcile won the race (then the bucket is ours to use) or the
        # name is taken in another project: GCS says which only in its message, so ask.
        try:
            _gcs_call(lambda: client.get_bucket(location.bucket, timeout=timeout, retry=None),
                      location, credentials_ref)
            return
        except ArtifactsError:
            raise
        except gexc.GoogleAPICallError:
            raise ArtifactsError(
                "BucketCreateFailed",
                f"could not create bucket {location.bucket!r} (409 Conflict): the name is taken "
                "by another project; pick another bucket",
            ) from None
    except gexc.Forbidden:
        raise ArtifactsError(
            "BucketCreateFailed",
            f"could not create bucket {location.bucket!r} (403 Forbidden): the credentials may not "
            f"create buckets in project {project!r} (storage.buckets.create): create it yourself "
            "and set createBucket: false",
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise ArtifactsError(
            "BucketCreateFailed",
            f"could not create bucket {location.bucket!r} ({_gcs_code(exc)}): check the store's logs",
        ) from None


# ---- Azure Blob Storage --------------------------------------------------------------------

AZURE_CONTAINER_FIELD = "spec.artifacts.azure.container"
AZURE_ACCOUNT_FIELD = "spec.artifacts.azure.account"
# The Secret keys, as messages name them: an account key, or a whole connection string.
AZURE_KEY_KEY = "accountKey"
AZURE_CONNECTION_STRING_KEY = "connectionString"
# The env var MLflow reads the account key from; azure_client_env's template refers to it.
AZURE_KEY_ENV = "AZURE_STORAGE_ACCESS_KEY"
_AZURE_CONTAINER_CHARS = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_AZURE_ACCOUNT_CHARS = re.compile(r"^[a-z0-9]{3,24}$")
# A shared key can do anything in its account: a 403 with these codes means the key is
# wrong (Azure says AuthenticationFailed; Azurite says AuthorizationFailure).
_AZURE_CREDENTIAL_CODES = frozenset({"AuthenticationFailed", "InvalidAuthenticationInfo"})
_AZURE_DENIED_CODES = frozenset({
    "AuthorizationFailure", "AuthorizationPermissionMismatch", "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch", "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch", "InsufficientAccountPermissions",
})


def validate_azure_container_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.azure.container`` unless ``name`` follows Azure's rules."""
    if not 3 <= len(name) <= 63:
        raise ValueError(f"{AZURE_CONTAINER_FIELD} {name!r} is not a valid Azure container name: "
                         "it must be 3 to 63 characters long")
    if not _AZURE_CONTAINER_CHARS.match(name):
        raise ValueError(f"{AZURE_CONTAINER_FIELD} {name!r} is not a valid Azure container name: use "
                         "only lowercase letters, digits and single '-' between them, starting with a "
                         "letter or digit")


def validate_azure_account_name(name: str) -> None:
    """Raise ``ValueError`` naming ``spec.artifacts.azure.account`` unless ``name`` is a storage account name."""
    if not _AZURE_ACCOUNT_CHARS.match(name):
        raise ValueError(f"{AZURE_ACCOUNT_FIELD} {name!r} is not a valid storage account name: "
                         "use 3 to 24 lowercase letters and digits")


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


def _azure_unreachable(location: AzureLocation) -> ArtifactsError:
    return _store_unreachable(_shown_endpoint(location.account_url), "spec.artifacts.azure.account and endpoint")


def _azure_credentials_rejected(credentials_ref: str | None, code: str) -> ArtifactsError:
    return _store_credentials_rejected(
        credentials_ref, code,
        f"fix {AZURE_KEY_KEY} (or {AZURE_CONNECTION_STRING_KEY}); on Azure, also check the account's firewall rules")


def _azure_container_missing(location: AzureLocation) -> ArtifactsError:
    return _store_missing(f"container {location.container!r}", "spec.artifacts.azure.createContainer",
                          f" in storage account {location.account!r}")


def _azure_code(exc: Exception) -> str:
    """The storage error code (``x-ms-error-code``), or the HTTP status."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    if not code:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        code = headers.get("x-ms-error-code") or ""
    if not code:
        status = getattr(exc, "status_code", None)
        code = str(status) if status else type(exc).__name__
    return str(code)


def _azure_client(location: AzureLocation, account_key: str | None, connection_string: str | None,
                  timeout: float, credentials_ref: str | None):
    """A BlobServiceClient, and whether it signs with a shared key."""
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.blob import BlobServiceClient

    where = f"Secret {credentials_ref}" if credentials_ref else "the credentials Secret"
    # One attempt, no retry: a check that fails should say so within ``timeout``.
    options = {"retry_total": 0, "connection_timeout": timeout, "read_timeout": timeout}
    if connection_string is not None:
        try:
            client = BlobServiceClient.from_connection_string(connection_string, **options)
        except (ValueError, TypeError):
            raise ArtifactsError(
                "InvalidCredentials",
                f"{AZURE_CONNECTION_STRING_KEY} in {where} is not a valid connection string "
                "(expected AccountName=...;AccountKey=...;BlobEndpoint=...)",
            ) from None
        if client.account_name != location.account:
            raise ArtifactsError(
                "InvalidCredentials",
                f"{AZURE_CONNECTION_STRING_KEY} in {where} is for storage account "
                f"{client.account_name!r}, not {location.account!r} ({AZURE_ACCOUNT_FIELD})",
            )
        return client, True
    if account_key is not None:
        if not account_key.strip():
            raise ArtifactsError("NoCredentials", f"{where} has an empty {AZURE_KEY_KEY}")
        return BlobServiceClient(location.account_url,
                                 credential=AzureNamedKeyCredential(location.account, account_key),
                                 **options), True
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ArtifactsError(
            "NoCredentials",
            f"no credentialsSecretRef is set, so trackop could not check container "
            f"{location.container!r}: set spec.artifacts.azure.credentialsSecretRef (key "
            f"{AZURE_KEY_KEY} or {AZURE_CONNECTION_STRING_KEY}); Azure workload identity needs "
            "azure-identity, which trackop does not bundle",
        ) from None
    return BlobServiceClient(location.account_url, credential=DefaultAzureCredential(), **options), False


def _azure_call(fn, location: AzureLocation, credentials_ref: str | None, shared_key: bool):
    """Run one Azure call; map transport and credential failures, re-raise the rest."""
    from azure.core import exceptions as aexc

    try:
        return fn()
    except (aexc.ServiceRequestError, aexc.ServiceResponseError):
        raise _azure_unreachable(location) from None
    except aexc.ClientAuthenticationError as exc:
        # Includes a key that is not base64 (AzureSigningError, raised before any request).
        code = "the key is not valid base64" if type(exc).__name__ == "AzureSigningError" else _azure_code(exc)
        raise _azure_credentials_rejected(credentials_ref, code) from None
    except aexc.HttpResponseError as exc:
        code = _azure_code(exc)
        if code in _AZURE_CREDENTIAL_CODES or (shared_key and code == "AuthorizationFailure"):
            raise _azure_credentials_rejected(credentials_ref, code) from None
        raise


def check_azure(location: AzureLocation, account_key: str | None, *,
                connection_string: str | None = None, credentials_ref: str | None = None,
                timeout: float = 5) -> list[str]:
    """Check the container is reachable and writable under the prefix; create it if allowed.

    Credentials: ``account_key`` (the Secret's ``accountKey``, used with
    ``location.account_url``) or ``connection_string`` (its ``connectionString``, which
    names the endpoint itself; it must be for ``location.account``); both ``None`` means
    the operator's own identity (``DefaultAzureCredential``, if azure-identity is
    installed). ``credentials_ref`` only names the Secret in messages. Returns what
    changed (``["created container X"]`` or ``[]``); raises ``ArtifactsError`` with the
    reasons of ``check_s3`` otherwise (a missing container is ``BucketNotFound``).
    """
    from azure.core import exceptions as aexc

    service, shared_key = _azure_client(location, account_key, connection_string, timeout, credentials_ref)
    container = service.get_container_client(location.container)
    changes: list[str] = []
    get_denied = False
    try:
        _azure_call(lambda: container.get_container_properties(timeout=int(timeout) or 1),
                    location, credentials_ref, shared_key)
    except aexc.ResourceNotFoundError:
        if not location.create_container:
            raise _azure_container_missing(location) from None
        _azure_create_container(container, location, credentials_ref, shared_key, timeout)
        changes.append(f"created container {location.container}")
    except aexc.HttpResponseError as exc:
        if _azure_code(exc) in _AZURE_DENIED_CODES:
            get_denied = True  # reading container properties is not what MLflow needs; listing is
        else:
            raise ArtifactsError(
                "ProbeFailed", f"checking container {location.container!r} failed ({_azure_code(exc)})",
            ) from None

    if get_denied:
        try:
            _azure_call(lambda: next(iter(container.list_blobs(
                name_starts_with=location.prefix or None, results_per_page=1).by_page()), None),
                location, credentials_ref, shared_key)
        except aexc.ResourceNotFoundError:
            raise _azure_container_missing(location) from None
        except aexc.HttpResponseError as exc:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not list blobs in {location.uri} ({_azure_code(exc)}), which "
                "MLflow needs: grant Storage Blob Data Contributor on the container",
            ) from None

    name = f"{location.prefix}/{PROBE_PREFIX}{secrets.token_hex(8)}" if location.prefix \
        else f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    step = "write"
    try:
        _azure_call(lambda: container.upload_blob(name, b"trackop write probe\n", overwrite=True,
                                                  timeout=int(timeout) or 1),
                    location, credentials_ref, shared_key)
        step = "delete"
        _azure_call(lambda: container.delete_blob(name, timeout=int(timeout) or 1),
                    location, credentials_ref, shared_key)
    except aexc.ResourceNotFoundError:
        raise _azure_container_missing(location) from None
    except aexc.HttpResponseError as exc:
        code = _azure_code(exc)
        if code in _AZURE_DENIED_CODES:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not {step} blobs in {location.uri} ({code}): grant Storage "
                "Blob Data Contributor on the container",
            ) from None
        raise ArtifactsError(
            "ProbeFailed", f"the probe {step} in {location.uri} failed ({code})",
        ) from None
    return changes


def _azure_create_container(container, location: AzureLocation, credentials_ref: str | None,
                            shared_key: bool, timeout: float) -> None:
    from azure.core import exceptions as aexc

    try:
        _azure_call(lambda: container.create_container(timeout=int(timeout) or 1),
                    location, credentials_ref, shared_key)
    except aexc.ResourceExistsError as exc:
        if _azure_code(exc) == "ContainerBeingDeleted":
            raise ArtifactsError(
                "BucketCreateFailed",
                f"could not create container {location.container!r} (ContainerBeingDeleted): "
                "a container of that name is being deleted; trackop retries",
            ) from None
        return  # another reconcile won the race; same outcome
    except aexc.HttpResponseError as exc:
        code = _azure_code(exc)
        hint = ("the credentials may not create containers: create it yourself and set "
                "createContainer: false") if code in _AZURE_DENIED_CODES else "check the store's logs"
        raise ArtifactsError(
            "BucketCreateFailed", f"could not create container {location.container!r} ({code}): {hint}",
        ) from None


# ---- one entry point per ``spec.artifacts`` ---------------------------------------------

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
