"""Google Cloud Storage: the location, the workload env, the check.

Deciding is pure (``GCSLocation``, ``gcs_client_env``); ``check_gcs`` is the one function
that talks to Cloud Storage, with the condition reasons of ``check_s3``. The SDK is
imported only when a check runs.
"""

from __future__ import annotations

import json

from ..api.policy import endpoint_host, endpoint_refusal
from .common import ArtifactsError, StoreFailures, probe_name, secret_named, shown_endpoint
from .locations import GCS_CREDENTIALS_KEY, GCSLocation

_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
# Where Google's own key files send their token requests: Google's, like its storage endpoint.
_GOOGLE_TOKEN_HOST = "oauth2.googleapis.com"


_FAILURES = StoreFailures(endpoint_fields="spec.artifacts.gcs.endpoint",
                          credentials_fix=f"put a valid, enabled key file (JSON) under {GCS_CREDENTIALS_KEY}",
                          create_field="spec.artifacts.gcs.createBucket",
                          credentials_subject="the service-account key", credentials_verb="was")


def _unreachable(location: GCSLocation) -> ArtifactsError:
    return _FAILURES.unreachable(shown_endpoint(location.endpoint) if location.endpoint
                                 else "https://storage.googleapis.com")


def _bucket_missing(location: GCSLocation) -> ArtifactsError:
    return _FAILURES.missing(f"bucket {location.bucket!r}")


def _refuse_token_uri(info: dict, where: str, allowed_endpoints: tuple[str, ...]) -> None:
    """The key file names the host its token request goes to: with an allow-list of
    endpoints, that host must be Google's own or an allowed one."""
    token_uri = info.get("token_uri")
    if not allowed_endpoints or not isinstance(token_uri, str) or endpoint_host(token_uri) == _GOOGLE_TOKEN_HOST:
        return
    refusal = endpoint_refusal(f"the token_uri of {GCS_CREDENTIALS_KEY} in {where}", token_uri, allowed_endpoints)
    if refusal:
        raise ArtifactsError("EndpointNotAllowed", refusal)


def _client(location: GCSLocation, credentials_json: str | None, timeout: float,
            credentials_ref: str | None, allowed_endpoints: tuple[str, ...] = ()):
    """A storage client and the project it would create buckets in (``None`` if unknown)."""
    import google.auth
    import google.auth.exceptions
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import storage
    from google.oauth2 import service_account

    where = secret_named(credentials_ref)
    project = location.project
    http = None
    if credentials_json is not None:
        if not credentials_json.strip():
            raise ArtifactsError("NoCredentials", f"{where} has an empty {GCS_CREDENTIALS_KEY}")
        try:
            info = json.loads(credentials_json)
            if not isinstance(info, dict) or info.get("type") != "service_account":
                raise ValueError("not a service-account key")
            credentials = service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)
        except (ValueError, TypeError, KeyError):
            # Never the parser's message: it may quote the key.
            raise ArtifactsError(
                "InvalidCredentials",
                f"{GCS_CREDENTIALS_KEY} in {where} is not a service-account key file "
                "(JSON with \"type\": \"service_account\", client_email and private_key)",
            ) from None
        _refuse_token_uri(info, where, allowed_endpoints)
        project = project or credentials.project_id
        # The token request gets the same deadline as the storage calls.
        http = AuthorizedSession(credentials, refresh_timeout=timeout)
    elif location.endpoint:
        credentials = AnonymousCredentials()  # an emulator: no authentication
    else:
        try:
            credentials, default_project = google.auth.default(scopes=_SCOPES)
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


def _error(exc: Exception, location: GCSLocation, credentials_ref: str | None) -> ArtifactsError | None:
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
        return _unreachable(location)
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return _FAILURES.credentials_rejected(credentials_ref, "the token request was refused")
    if isinstance(exc, gexc.Unauthorized):
        return _FAILURES.credentials_rejected(credentials_ref, "401 Unauthorized")
    return None


def _code(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    return f"{int(code)} {type(exc).__name__}" if isinstance(code, int) else type(exc).__name__


def _call(fn, location: GCSLocation, credentials_ref: str | None):
    """Run one GCS call; map transport and credential failures, re-raise the rest."""
    try:
        return fn()
    except Exception as exc:
        mapped = _error(exc, location, credentials_ref)
        if mapped is not None:
            raise mapped from None
        raise


def check_gcs(location: GCSLocation, credentials_json: str | None, *,
              credentials_ref: str | None = None, timeout: float = 5,
              allowed_endpoints: tuple[str, ...] = ()) -> list[str]:
    """Check the bucket is reachable and writable under the prefix; create it if allowed.

    ``credentials_json`` is the service-account key file's content (the Secret's
    ``serviceAccountKey``); ``None`` means the operator's own identity (Application
    Default Credentials) or, with ``location.endpoint`` set, an emulator reached
    anonymously. ``credentials_ref`` only names the Secret in messages; with
    ``allowed_endpoints``, a key file's own ``token_uri`` must be allowed too. Returns what
    changed (``["created bucket X"]`` or ``[]``); raises ``ArtifactsError`` with the
    reasons of ``check_s3`` otherwise.
    """
    from google.api_core import exceptions as gexc

    client, project = _client(location, credentials_json, timeout, credentials_ref, allowed_endpoints)
    changes: list[str] = []
    bucket = client.bucket(location.bucket)
    get_denied = False
    try:
        _call(lambda: client.get_bucket(location.bucket, timeout=timeout, retry=None),
              location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.NotFound:
        if not location.create_bucket:
            raise _bucket_missing(location) from None
        _create_bucket(client, location, project, timeout, credentials_ref)
        changes.append(f"created bucket {location.bucket}")
    except gexc.Forbidden:
        # storage.buckets.get is not in roles/storage.objectAdmin, and MLflow does not
        # need it: what MLflow needs (list, write, delete objects) is checked instead.
        get_denied = True
    except gexc.GoogleAPICallError as exc:
        raise ArtifactsError(
            "ProbeFailed", f"checking bucket {location.bucket!r} failed ({_code(exc)})",
        ) from None

    if get_denied:
        try:
            _call(lambda: list(client.list_blobs(location.bucket, prefix=location.prefix or None,
                                                 max_results=1, timeout=timeout, retry=None)),
                  location, credentials_ref)
        except ArtifactsError:
            raise
        except gexc.NotFound:
            raise _bucket_missing(location) from None
        except gexc.Forbidden:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not list objects in {location.uri}, which MLflow needs: grant "
                f"storage.objects.list on bucket {location.bucket!r} (e.g. roles/storage.objectAdmin)",
            ) from None
        except gexc.GoogleAPICallError as exc:
            raise ArtifactsError(
                "ProbeFailed", f"listing {location.uri} failed ({_code(exc)})",
            ) from None

    name = probe_name(location.prefix)
    blob = bucket.blob(name)
    step = "write"
    try:
        _call(lambda: blob.upload_from_string(b"trackop write probe\n", timeout=timeout, retry=None),
              location, credentials_ref)
        step = "delete"
        _call(lambda: blob.delete(timeout=timeout, retry=None), location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.NotFound:
        raise _bucket_missing(location) from None
    except gexc.Forbidden:
        permission = "storage.objects.create" if step == "write" else "storage.objects.delete"
        raise ArtifactsError(
            "AccessDenied",
            f"the credentials may not {step} objects in {location.uri}: grant {permission} on "
            f"bucket {location.bucket!r} (e.g. roles/storage.objectAdmin)",
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise ArtifactsError(
            "ProbeFailed", f"the probe {step} in {location.uri} failed ({_code(exc)})",
        ) from None
    return changes


def _create_bucket(client, location: GCSLocation, project: str | None, timeout: float,
                   credentials_ref: str | None) -> None:
    from google.api_core import exceptions as gexc

    if not project:
        raise ArtifactsError(
            "BucketCreateFailed",
            f"could not create bucket {location.bucket!r}: no project to create it in; "
            "set spec.artifacts.gcs.project",
        )
    try:
        _call(lambda: client.create_bucket(location.bucket, project=project, timeout=timeout,
                                           retry=None),
              location, credentials_ref)
    except ArtifactsError:
        raise
    except gexc.Conflict:
        # Either another reconcile won the race (then the bucket is ours to use) or the
        # name is taken in another project: GCS says which only in its message, so ask.
        try:
            _call(lambda: client.get_bucket(location.bucket, timeout=timeout, retry=None),
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
            f"could not create bucket {location.bucket!r} ({_code(exc)}): check the store's logs",
        ) from None

