"""The API server's refusals: the Status object it sends, read in one place."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

# What the API server's refusals are raised as, for the callers of Kube outside this package.
ApiException = client.ApiException


def _status(exc: client.ApiException) -> dict[str, Any]:
    """The Status object the API server sent with a refusal ({} when the body is not one)."""
    try:
        found = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def status_message(exc: client.ApiException) -> str:
    """The API server's own words for a refused request ("" when it sent none)."""
    message = _status(exc).get("message")
    return message if isinstance(message, str) else ""


def refusal_message(exc: client.ApiException) -> str:
    """The API server's own words for a refused request, or its status code and reason."""
    return status_message(exc) or f"{exc.status} {exc.reason}"


def names_an_object(exc: client.ApiException) -> bool:
    """A 404 about a missing object names it; one about a missing API (a CRD that is not
    installed) does not."""
    details = _status(exc).get("details")
    return isinstance(details, dict) and bool(details.get("name"))
