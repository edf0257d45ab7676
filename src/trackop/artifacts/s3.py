"""Amazon S3 and S3-compatible stores (MinIO): the location, the workload env, the check.

Deciding is pure (``S3Location``, ``s3_client_env``); ``check_s3`` is the one function that
talks to S3. Its messages are built from the S3 error code only.
"""

from __future__ import annotations

import boto3
import botocore.exceptions
from botocore.config import Config

from .common import ArtifactsError, StoreFailures, probe_name, secret_named, shown_endpoint
from .locations import DEFAULT_REGION, S3Location

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


def _shown_endpoint(endpoint: str | None, region: str = DEFAULT_REGION) -> str:
    """The endpoint for messages, without any ``user:password@`` part; AWS's own without one."""
    return shown_endpoint(endpoint) if endpoint else f"https://s3.{region}.amazonaws.com"


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
        raise ArtifactsError(
            "NoCredentials",
            f"{secret_named(credentials_ref)} must hold both accessKeyId and secretAccessKey "
            "(one is missing or empty)",
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


_FAILURES = StoreFailures(endpoint_fields="spec.artifacts.s3.endpoint",
                          credentials_fix="fix accessKeyId and secretAccessKey",
                          create_field="spec.artifacts.s3.createBucket")


def _unreachable(location: S3Location) -> ArtifactsError:
    return _FAILURES.unreachable(_shown_endpoint(location.endpoint, location.region))


def _bucket_missing(location: S3Location) -> ArtifactsError:
    return _FAILURES.missing(f"bucket {location.bucket!r}")


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
            raise _FAILURES.credentials_rejected(credentials_ref, code) from None
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
            raise _FAILURES.credentials_rejected(credentials_ref, code) from None
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

    key = probe_name(location.prefix)
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
            raise _FAILURES.credentials_rejected(credentials_ref, code) from None
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

