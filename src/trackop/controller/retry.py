"""How soon kopf retries a handler: our backoff for failed steps, and a short retry when
the API server itself is the trouble."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kopf
import urllib3
from kubernetes import client

from ..kube.errors import status_message

MAX_RETRY_DELAY = 60.0
API_RETRY_DELAY = 5.0
FORBIDDEN_RETRY_DELAY = 15.0


def retry_delay(base: float, retry: int, backoff: bool = True) -> float:
    """Seconds until kopf retries a handler: ``base`` doubled per earlier retry (up to 16x)
    when backing off, never more than MAX_RETRY_DELAY."""
    factor = 2 ** min(retry, 4) if backoff else 1
    return min(base * factor, MAX_RETRY_DELAY)


def api_trouble(exc: BaseException) -> kopf.TemporaryError | None:
    """A retry soon, rather than after kopf's 60 s default for unexpected exceptions, when the
    API server did not answer (refused, reset, timed out), answered that it cannot serve yet
    (5xx), or refused (403: a missing permission, or an API server that restarted and has not
    loaded RBAC yet). No status can be written meanwhile; None for anything else."""
    if isinstance(exc, urllib3.exceptions.HTTPError) or (
            isinstance(exc, client.ApiException) and (exc.status or 0) >= 500):
        return kopf.TemporaryError(f"the Kubernetes API is unreachable ({type(exc).__name__}): retrying",
                                   delay=API_RETRY_DELAY)
    if isinstance(exc, client.ApiException) and exc.status == 403:
        detail = status_message(exc)
        return kopf.TemporaryError(
            f"the Kubernetes API refused a request (403 Forbidden: {detail[:300] or exc.reason}): the "
            "ServiceAccount lacks a permission the chart's ClusterRole grants, or the API server has "
            "just restarted and not loaded RBAC yet; retrying", delay=FORBIDDEN_RETRY_DELAY)
    return None


@contextmanager
def retrying_api_trouble() -> Iterator[None]:
    """Turn API trouble (see :func:`api_trouble`) into kopf's retry soon; re-raise the rest."""
    try:
        yield
    except Exception as exc:
        retry_soon = api_trouble(exc)
        if retry_soon is not None:
            raise retry_soon from None
        raise
