"""Azure Blob Storage: the location, the workload env, the check.

Deciding is pure (``AzureLocation``, ``azure_client_env``, ``azure_connection_string``);
``check_azure`` is the one function that talks to Azure, with the condition reasons of
``check_s3`` (a missing container is ``BucketNotFound`` too). The SDK is imported only
when a check runs.
"""

from __future__ import annotations

from ..api.validation import AZURE_ACCOUNT_FIELD
from .common import ArtifactsError, StoreFailures, probe_name, secret_named, shown_endpoint
from .locations import AZURE_CONNECTION_STRING_KEY, AZURE_KEY_KEY, AzureLocation

# A shared key can do anything in its account: a 403 with these codes means the key is
# wrong (Azure says AuthenticationFailed; Azurite says AuthorizationFailure).
_CREDENTIAL_CODES = frozenset({"AuthenticationFailed", "InvalidAuthenticationInfo"})
_DENIED_CODES = frozenset({
    "AuthorizationFailure", "AuthorizationPermissionMismatch", "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch", "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch", "InsufficientAccountPermissions",
})


_FAILURES = StoreFailures(
    endpoint_fields="spec.artifacts.azure.storageAccount and endpoint",
    credentials_fix=f"fix {AZURE_KEY_KEY} (or {AZURE_CONNECTION_STRING_KEY}); "
                    "on Azure, also check the account's firewall rules",
    create_field="spec.artifacts.azure.createContainer",
)


def _unreachable(location: AzureLocation) -> ArtifactsError:
    return _FAILURES.unreachable(shown_endpoint(location.account_url))


def _container_missing(location: AzureLocation) -> ArtifactsError:
    return _FAILURES.missing(f"container {location.container!r}", f" in storage account {location.account!r}")


def _code(exc: Exception) -> str:
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


def _client(location: AzureLocation, account_key: str | None, connection_string: str | None,
            timeout: float, credentials_ref: str | None):
    """A BlobServiceClient, and whether it signs with a shared key."""
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.blob import BlobServiceClient

    where = secret_named(credentials_ref)
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


def _call(fn, location: AzureLocation, credentials_ref: str | None, shared_key: bool):
    """Run one Azure call; map transport and credential failures, re-raise the rest."""
    from azure.core import exceptions as aexc

    try:
        return fn()
    except (aexc.ServiceRequestError, aexc.ServiceResponseError):
        raise _unreachable(location) from None
    except aexc.ClientAuthenticationError as exc:
        # Includes a key that is not base64 (AzureSigningError, raised before any request).
        code = "the key is not valid base64" if type(exc).__name__ == "AzureSigningError" else _code(exc)
        raise _FAILURES.credentials_rejected(credentials_ref, code) from None
    except aexc.HttpResponseError as exc:
        code = _code(exc)
        if code in _CREDENTIAL_CODES or (shared_key and code == "AuthorizationFailure"):
            raise _FAILURES.credentials_rejected(credentials_ref, code) from None
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

    service, shared_key = _client(location, account_key, connection_string, timeout, credentials_ref)
    container = service.get_container_client(location.container)
    changes: list[str] = []
    get_denied = False
    try:
        _call(lambda: container.get_container_properties(timeout=int(timeout) or 1),
              location, credentials_ref, shared_key)
    except aexc.ResourceNotFoundError:
        if not location.create_container:
            raise _container_missing(location) from None
        _create_container(container, location, credentials_ref, shared_key, timeout)
        changes.append(f"created container {location.container}")
    except aexc.HttpResponseError as exc:
        if _code(exc) in _DENIED_CODES:
            get_denied = True  # reading container properties is not what MLflow needs; listing is
        else:
            raise ArtifactsError(
                "ProbeFailed", f"checking container {location.container!r} failed ({_code(exc)})",
            ) from None

    if get_denied:
        try:
            _call(lambda: next(iter(container.list_blobs(
                name_starts_with=location.prefix or None, results_per_page=1).by_page()), None),
                location, credentials_ref, shared_key)
        except aexc.ResourceNotFoundError:
            raise _container_missing(location) from None
        except aexc.HttpResponseError as exc:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not list blobs in {location.uri} ({_code(exc)}), which "
                "MLflow needs: grant Storage Blob Data Contributor on the container",
            ) from None

    name = probe_name(location.prefix)
    step = "write"
    try:
        _call(lambda: container.upload_blob(name, b"trackop write probe\n", overwrite=True,
                                            timeout=int(timeout) or 1),
              location, credentials_ref, shared_key)
        step = "delete"
        _call(lambda: container.delete_blob(name, timeout=int(timeout) or 1),
              location, credentials_ref, shared_key)
    except aexc.ResourceNotFoundError:
        raise _container_missing(location) from None
    except aexc.HttpResponseError as exc:
        code = _code(exc)
        if code in _DENIED_CODES:
            raise ArtifactsError(
                "AccessDenied",
                f"the credentials may not {step} blobs in {location.uri} ({code}): grant Storage "
                "Blob Data Contributor on the container",
            ) from None
        raise ArtifactsError(
            "ProbeFailed", f"the probe {step} in {location.uri} failed ({code})",
        ) from None
    return changes


def _create_container(container, location: AzureLocation, credentials_ref: str | None,
                      shared_key: bool, timeout: float) -> None:
    from azure.core import exceptions as aexc

    try:
        _call(lambda: container.create_container(timeout=int(timeout) or 1),
              location, credentials_ref, shared_key)
    except aexc.ResourceExistsError as exc:
        if _code(exc) == "ContainerBeingDeleted":
            raise ArtifactsError(
                "BucketCreateFailed",
                f"could not create container {location.container!r} (ContainerBeingDeleted): "
                "a container of that name is being deleted; trackop retries",
            ) from None
        return  # another reconcile won the race; same outcome
    except aexc.HttpResponseError as exc:
        code = _code(exc)
        hint = ("the credentials may not create containers: create it yourself and set "
                "createContainer: false") if code in _DENIED_CODES else "check the store's logs"
        raise ArtifactsError(
            "BucketCreateFailed", f"could not create container {location.container!r} ({code}): {hint}",
        ) from None

