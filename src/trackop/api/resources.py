"""A container's compute resources and Kubernetes quantities, checked as the API server
checks them (pure), so that ``spec.server.resources`` and ``spec.postgres.managed.resources``
never make the Deployment, StatefulSet or CloudNativePG Cluster they go into refused.

The CRD keeps both free-form (a quantity may be a YAML number, ``cpu: 0.5``, which a
structural schema can only say as a string or an integer): these rules are parse's alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .v1alpha1 import SpecError

# Kubernetes' quantity grammar, with the integer exponents its parser takes.
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# No resource is near 2^63 of its unit; past that Kubernetes' own arithmetic overflows.
_LARGEST = Decimal(2 ** 63 - 1)
_MAX_EXPONENT = 30

_STANDARD = ("cpu", "memory", "ephemeral-storage")
_HUGEPAGES = "hugepages-"
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def quantity_value(value: object) -> Decimal | None:
    """The value of a Kubernetes quantity (a string, or a JSON number), or None if it is none
    or out of range."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = value if isinstance(value, str) else repr(value)
    match = re.fullmatch(QUANTITY_PATTERN, text)
    if match is None or len(text) > 64:
        return None
    number, suffix = Decimal(match.group(1)), match.group(3) or ""
    if text.startswith("-"):
        number = -number
    if suffix in _BINARY:
        amount = number * 1024 ** _BINARY[suffix]
    else:
        exponent = _DECIMAL[suffix] if suffix in _DECIMAL else int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            return None
        amount = number.scaleb(exponent)
    return amount if abs(amount) <= _LARGEST else None


def check_positive_quantity(field: str, value: object) -> str:
    """A quantity above zero, such as a volume's size (the API server refuses 0)."""
    amount = quantity_value(value)
    if not isinstance(value, str) or amount is None or amount <= 0:
        raise SpecError(field, "must be a Kubernetes quantity above zero, such as 10Gi")
    return value


def _page_size(name: str) -> Decimal | None:
    size = quantity_value(name[len(_HUGEPAGES):])
    return size if size is not None and size > 0 else None


def _is_extended(name: str) -> bool:
    """A resource a device plugin or the scheduler counts, such as nvidia.com/gpu."""
    prefix, _, base = name.partition("/")
    return (bool(_DNS_SUBDOMAIN.fullmatch(prefix)) and len(prefix) <= 244 and "kubernetes.io" not in prefix
            and not prefix.startswith("requests.") and len(base) <= 63 and bool(_QUALIFIED_NAME.fullmatch(base)))


def _check_amount(where: str, name: object, value: object) -> Decimal:
    if not isinstance(name, str) or not (name in _STANDARD or (name.startswith(_HUGEPAGES) and _page_size(name))
                                         or _is_extended(name)):
        raise SpecError(where, f"{name!r} is not a container resource: use cpu, memory, ephemeral-storage, "
                               "hugepages-<size> or an extended resource such as nvidia.com/gpu")
    amount = quantity_value(value)
    if amount is None or amount < 0:
        raise SpecError(where, "must be a Kubernetes quantity of at least zero, such as 500m or 1Gi")
    if _is_extended(name) and amount != amount.to_integral_value():
        raise SpecError(where, f"{name} must be a whole number")
    if name.startswith(_HUGEPAGES) and amount % _page_size(name) != 0:
        raise SpecError(where, f"must be a multiple of the page size of {name}")
    return amount


def check_resources(field: str, value: object) -> Mapping[str, Any] | None:
    """A container's ``resources``: ``limits`` and ``requests`` only (the pod declares no
    resource claims), of container resources, each request within its limit; hugepages and
    extended resources cannot be overcommitted (request equal to limit)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError(field, "must be an object with limits and requests")
    unknown = sorted(map(str, set(value) - {"limits", "requests"}))
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", "is not allowed: set only limits and requests")
    amounts: dict[str, dict[str, Decimal]] = {"limits": {}, "requests": {}}
    for kind in amounts:
        entries = value.get(kind)
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise SpecError(f"{field}.{kind}", "must map resource names to quantities")
        for name, quantity in entries.items():
            amounts[kind][name] = _check_amount(f"{field}.{kind}.{name}", name, quantity)
    limits, requests = amounts["limits"], amounts["requests"]
    for name, amount in requests.items():
        overcommittable = name in _STANDARD
        if not overcommittable and name not in limits:
            raise SpecError(f"{field}.limits.{name}", f"is required with a request: {name} cannot be overcommitted")
        if not overcommittable and amount != limits[name]:
            raise SpecError(f"{field}.requests.{name}", f"must equal the limit: {name} cannot be overcommitted")
        if name in limits and amount > limits[name]:
            raise SpecError(f"{field}.requests.{name}", f"must be at most the limit, {value['limits'][name]}")
    names = {*limits, *requests}
    if any(name.startswith(_HUGEPAGES) for name in names) and not names & {"cpu", "memory"}:
        raise SpecError(field, "hugepages need a cpu or memory request or limit")
    return value

