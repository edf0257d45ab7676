"""The mutating admission webhook's decision for a Pod CREATE (pure: no I/O, no clock).

A pod opts in with the label ``trackop.dev/inject: "true"`` and names its backend with
the annotation ``trackop.dev/backend: <name>`` or ``<namespace>/<name>``. The webhook adds
``env`` entries for the keys the backend's injection mode needs (:func:`keys_for_mode`):
what is not secret (Server mode's tracking URI, the artifact root, endpoints, pool sizes)
as plain values, and only the secrets (Direct mode's database URI, bucket keys) from
(``valueFrom.secretKeyRef``) a *copy* of the backend's connection Secret that trackop
keeps in the pod's namespace. A copy goes only to the backend's own namespace and to
namespaces labelled ``trackop.dev/secret-copies: "true"`` (:func:`accepts_secret_copies`).

Rules, in the order :func:`mutate` applies them:

- No opt-in label: admitted unchanged, silently (the webhook sees every pod).
- Missing or invalid backend annotation, unknown backend, a namespace the backend does
  not admit, a backend whose connection Secret has no keys yet, secrets for a namespace
  that does not accept their copies: admitted unchanged with a warning, or rejected when
  the policy is fail-closed (``fail_closed=True``).
- ``kube-system`` and the operator's own namespace: never injected, and never rejected
  either (a rejected pod there could block the cluster's or trackop's own recovery).
- Env vars the pod sets explicitly (``env``) win: the webhook never adds a name a
  container already has. ``envFrom`` is *not* visible to the webhook (it would have to
  read the referenced ConfigMaps and Secrets), and Kubernetes lets an explicit ``env``
  entry override ``envFrom``: so a value the pod gets only through ``envFrom`` loses to
  the injected one. The webhook warns when that can happen; to keep your own value, set
  it in ``env``.
- Idempotent: a reinvoked webhook (``reinvocationPolicy: IfNeeded``) finds every name
  already set and the ``trackop.dev/injected`` annotation in place, and returns no patch.
- Init containers only with the annotation ``trackop.dev/inject-init-containers: "true"``
  (an init container usually prepares data and has no business with the tracking store).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.tuning import MAX_OVERFLOW_ENV, POOL_SIZE_ENV
from ..api.v1alpha1 import (
    BACKEND_ANNOTATION,
    INIT_ANNOTATION,
    INJECT_LABEL,
    INJECTED_ANNOTATION,
    INJECTION_MODES,
    NEVER_NAMESPACES,
    SECRET_COPIES_LABEL,
    BackendSpec,
    SpecError,
)
from ..api.validation import check_backend_name

# Re-exported: the validating webhook and the tests call it as injection.label_selector_matches.
from .selectors import label_selector_matches  # noqa: F401

_COPY_PREFIX = "trackop-"
_MAX_SECRET_NAME = 253
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

_S3_CLIENT_KEYS = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
# Fixed orders, so the env a pod gets does not depend on the Secret's key order.
_SERVER_KEYS = ("MLFLOW_TRACKING_URI", *_S3_CLIENT_KEYS)
_DIRECT_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_ROOT", POOL_SIZE_ENV, MAX_OVERFLOW_ENV, *_S3_CLIENT_KEYS)
# What workloads get as plain env values: settings derived from the spec, never a credential.
# Everything else is a secret, from a copy (a key not listed here is a secret by default).
_PLAIN_KEYS = frozenset({"MLFLOW_ARTIFACT_ROOT", POOL_SIZE_ENV, MAX_OVERFLOW_ENV, "MLFLOW_S3_ENDPOINT_URL",
                         "AWS_DEFAULT_REGION"})


def copy_secret_name(backend_namespace: str, backend_name: str) -> str:
    """The name of the connection Secret's copy in a pod's namespace: ``trackop-<ns>.<name>``.

    The separator is a '.', which neither a namespace (DNS-1123 label) nor a backend name
    (DNS-1035 label) can contain, so two backends never share a copy ("a-b"/"c" and
    "a"/"b-c" would with '-'). Anything that is not a plain label pair, or would exceed
    253 characters, gets ``trackop-<hash>`` instead: still unique and a DNS subdomain.
    """
    name = f"{_COPY_PREFIX}{backend_namespace}.{backend_name}"
    if (_DNS1123_LABEL.fullmatch(backend_namespace) and len(backend_namespace) <= 63
            and _DNS1123_LABEL.fullmatch(backend_name) and len(backend_name) <= 63
            and len(name) <= _MAX_SECRET_NAME):
        return name
    digest = hashlib.sha256(f"{backend_namespace}/{backend_name}".encode()).hexdigest()[:32]
    return f"{_COPY_PREFIX}{digest}"



def copy_label_value(namespace: str, name: str) -> str:
    # Label values stop at 63 characters; a hash of the backend's reference always fits.
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:16]


def keys_for_mode(mode: str, secret_keys: Iterable[str]) -> list[str]:
    """The connection Secret's keys that workloads get in ``mode``, each only if present.

    ``Server``: the tracking server's URI, plus the S3 client settings only when the
    Secret has them (it has them only when the server does not proxy artifacts, so the
    client writes to the bucket itself). Never ``PG*`` nor ``MLFLOW_BACKEND_STORE_URI``:
    workloads hold no database password. ``Direct``: the database URI (it carries the
    password: that is what Direct means), the artifact root, the pool budget and the S3
    client settings. A key absent from the Secret is never referenced, because a
    ``secretKeyRef`` to a missing key keeps the container from starting.
    """
    if mode not in INJECTION_MODES:
        raise ValueError(f"unknown injection mode {mode!r} (expected one of {', '.join(INJECTION_MODES)})")
    present = set(secret_keys)
    wanted = _SERVER_KEYS if mode == "Server" else _DIRECT_KEYS
    return [key for key in wanted if key in present]


def is_secret(mode: str, key: str) -> bool:
    """Whether ``key`` holds a secret in ``mode``: the tracking URI is one only in Direct mode
    (the database URI with its password); Server mode's is the server's http URI."""
    if key == "MLFLOW_TRACKING_URI":
        return mode == "Direct"
    return key not in _PLAIN_KEYS


def accepts_secret_copies(backend_namespace: str, namespace: str, labels: Mapping[str, str],
                          scope: frozenset[str] | None = None) -> bool:
    """Whether a copy holding secrets may go to ``namespace`` (already admitted by the
    backend): its own namespace, or one that opts in with ``trackop.dev/secret-copies:
    "true"``; with ``scope`` (the namespaces the operator watches and alone may write
    Secrets in, when it runs with ``--namespace``) only one of those."""
    if scope is not None and namespace not in scope:
        return False
    return namespace == backend_namespace or labels.get(SECRET_COPIES_LABEL) == "true"


def never_injected(pod_namespace: str, operator_namespace: str | None) -> bool:
    """``kube-system`` and the operator's own namespace are never injected."""
    return pod_namespace in NEVER_NAMESPACES or pod_namespace == operator_namespace


def admits_namespace(backend_namespace: str, selector: Mapping[str, Any] | None, pod_namespace: str,
                     namespace_labels: Mapping[str, str], operator_namespace: str | None) -> bool:
    """Whether a backend may inject into ``pod_namespace``.

    Never ``kube-system`` nor the operator's namespace (even when the backend lives
    there); always the backend's own namespace; otherwise only what ``namespaceSelector``
    selects, and *no* selector means no other namespace: a backend shares its tracking
    store across namespaces only when its owner says so. Raises ValueError for a
    malformed selector.
    """
    if never_injected(pod_namespace, operator_namespace):
        return False
    if pod_namespace == backend_namespace:
        return True
    if selector is None:
        return False
    return label_selector_matches(selector, namespace_labels)


def parse_backend_reference(annotation: str | None, pod_namespace: str) -> tuple[str, str] | None:
    """``("ns", "name")`` from ``name`` (the pod's namespace) or ``ns/name``; None when
    missing or not a valid namespace and backend name."""
    if not isinstance(annotation, str):
        return None
    parts = annotation.strip().split("/")
    if len(parts) == 1:
        namespace, name = pod_namespace, parts[0]
    elif len(parts) == 2:
        namespace, name = parts
    else:
        return None
    if not (_DNS1123_LABEL.fullmatch(namespace) and len(namespace) <= 63):
        return None
    try:
        check_backend_name(name)
    except SpecError:
        return None
    return namespace, name


@dataclass(frozen=True)
class BackendView:
    """What the webhook needs to know about a TrackingBackend.

    ``secret_keys``: the keys its connection Secret has now (pods get the subset
    :func:`keys_for_mode` picks; the copy only the secrets among them).
    ``plain_values``: (key, value) of the keys that are not secret, injected as values.
    ``namespace_selector``: ``spec.injection.namespaceSelector``.
    """

    namespace: str
    name: str
    mode: str
    namespace_selector: Mapping[str, Any] | None
    secret_keys: tuple[str, ...]
    plain_values: tuple[tuple[str, str], ...] = ()

    @property
    def reference(self) -> str:
        return f"{self.namespace}/{self.name}"


def backend_view(spec: BackendSpec, data: Mapping[str, str]) -> BackendView:
    """What the webhook keeps of a parsed backend whose connection Secret holds ``data``
    (the values of secrets are not kept: the index passes placeholders for them)."""
    plain = tuple((key, data[key]) for key in sorted(data) if not is_secret(spec.injection_mode, key))
    return BackendView(spec.namespace, spec.name, spec.injection_mode, spec.namespace_selector,
                       tuple(sorted(data)), plain)


@dataclass(frozen=True)
class Decision:
    """The admission response: ``patch`` is an RFC 6902 JSON patch (empty: unchanged)."""

    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reason: str = ""


def expected_env_names(backend: BackendView) -> list[str]:
    """The env names an injected container gets from ``backend`` (for periodic checks)."""
    return keys_for_mode(backend.mode, backend.secret_keys)


def injected_secrets(backend: BackendView) -> list[str]:
    """The env names a pod gets from a copy; none (Server mode, mostly): no copy at all."""
    return [key for key in expected_env_names(backend) if is_secret(backend.mode, key)]


def copy_secret_data(backend: BackendView, data: Mapping[str, str]) -> dict[str, str]:
    """The data of the copy in a pod's namespace: only the secrets the mode needs."""
    return {key: data[key] for key in keys_for_mode(backend.mode, data) if is_secret(backend.mode, key)}


def missed_injection(pod: Mapping[str, Any]) -> bool:
    """A pod that opted in but came up without injection (the webhook was down and its
    failure policy is Ignore, or it admitted the pod with a warning)."""
    metadata = pod.get("metadata") or {}
    return _opted_in(metadata) and INJECTED_ANNOTATION not in (metadata.get("annotations") or {})


def _opted_in(metadata: Mapping[str, Any]) -> bool:
    # Exactly "true", like Kubernetes' own opt-in labels: a typo must not inject.
    return (metadata.get("labels") or {}).get(INJECT_LABEL) == "true"


def json_pointer_token(token: str) -> str:
    """RFC 6901 escaping: '~' first, then '/' (``trackop.dev/injected`` -> ``trackop.dev~1injected``)."""
    return token.replace("~", "~0").replace("/", "~1")


def _pod_label(pod: Mapping[str, Any], pod_namespace: str) -> str:
    # Pods from a ReplicaSet have only generateName on CREATE.
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName') or ''}<generated>"
    return f"{pod_namespace}/{name}"


def _refuse(message: str, fail_closed: bool) -> Decision:
    if fail_closed:
        return Decision(allowed=False, reason=message)
    return Decision(allowed=True, warnings=[message], reason=message)


def _env_entries(backend: BackendView, secret_name: str) -> dict[str, dict[str, Any]]:
    """Each env entry the backend injects: a plain value, or a reference into the copy."""
    plain = dict(backend.plain_values)
    return {key: {"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
            if is_secret(backend.mode, key) else {"name": key, "value": plain[key]}
            for key in expected_env_names(backend)}


def _container_ops(kind: str, containers: Sequence[Mapping[str, Any]],
                   entries: Mapping[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Ops that add the missing ``entries`` to each container, and warnings about ``envFrom``."""
    ops: list[dict[str, Any]] = []
    warnings: list[str] = []
    for index, container in enumerate(containers):
        env = container.get("env")
        present = {entry.get("name") for entry in env or [] if isinstance(entry, Mapping)}
        missing = [key for key in entries if key not in present]
        if not missing:
            continue
        base = f"/spec/{kind}/{index}/env"
        if env is None:
            # "add" on a missing (or null) member creates it; appending with /- would fail.
            ops.append({"op": "add", "path": base, "value": [entries[k] for k in missing]})
        else:
            ops += [{"op": "add", "path": f"{base}/-", "value": entries[k]} for k in missing]
        if container.get("envFrom"):
            warnings.append(f"trackop: container {container.get('name')!r} has envFrom; the injected "
                            f"{', '.join(missing)} override the same names from it (set them in env to keep yours)")
    return ops, warnings


def mutate(pod: Mapping[str, Any], pod_namespace: str, backend: BackendView | None,
           namespace_labels: Mapping[str, str], *, operator_namespace: str | None, fail_closed: bool,
           copy_scope: frozenset[str] | None = None) -> Decision:
    """The webhook's answer for a Pod CREATE in ``pod_namespace`` (the request's namespace:
    a pod's own ``metadata.namespace`` may be empty on CREATE).

    ``backend`` is the TrackingBackend the pod's annotation names (the caller resolves it
    with :func:`parse_backend_reference`), or None when it does not exist.
    ``namespace_labels`` are the labels of ``pod_namespace``. ``fail_closed`` turns every
    warning about a pod that opted in into a rejection. ``copy_scope``: the namespaces
    the operator may keep copies in (None: all), as :func:`accepts_secret_copies` says.
    """
    metadata = pod.get("metadata") or {}
    if not _opted_in(metadata):
        return Decision(allowed=True, reason="not opted in")
    who = _pod_label(pod, pod_namespace)
    if never_injected(pod_namespace, operator_namespace):
        # Warn only: rejecting here could block kube-system's or trackop's own pods.
        message = f"trackop: pods in namespace {pod_namespace} are never injected ({who} admitted unchanged)"
        return Decision(allowed=True, warnings=[message], reason=message)
    annotations = metadata.get("annotations") or {}
    reference = parse_backend_reference(annotations.get(BACKEND_ANNOTATION), pod_namespace)
    if reference is None:
        return _refuse(f"trackop: pod {who} has label {INJECT_LABEL}=true but annotation {BACKEND_ANNOTATION} "
                       f"is missing or not <name> or <namespace>/<name>", fail_closed)
    ref_text = f"{reference[0]}/{reference[1]}"
    if backend is None:
        return _refuse(f"trackop: pod {who} names unknown backend {ref_text}", fail_closed)
    if (backend.namespace, backend.name) != reference:
        # The caller looked up the wrong object: a bug, not a user error.
        raise ValueError(f"backend {backend.reference} does not match the pod's reference {ref_text}")
    try:
        admitted = admits_namespace(backend.namespace, backend.namespace_selector, pod_namespace,
                                    namespace_labels, operator_namespace)
    except ValueError as error:
        return _refuse(f"trackop: backend {ref_text} has an invalid namespaceSelector ({error})", fail_closed)
    if not admitted:
        return _refuse(f"trackop: backend {ref_text} does not admit namespace {pod_namespace} "
                       f"(spec.injection.namespaceSelector)", fail_closed)
    keys = expected_env_names(backend)
    if not keys:
        # No connection Secret yet: nothing to reference (a missing key blocks the pod).
        return _refuse(f"trackop: backend {ref_text} has no connection Secret yet", fail_closed)
    secrets = injected_secrets(backend)
    if secrets and not accepts_secret_copies(backend.namespace, pod_namespace, namespace_labels, copy_scope):
        # Without a copy the secretKeyRefs would keep the containers from starting.
        where = (f"label the namespace {SECRET_COPIES_LABEL}=true to accept them"
                 if copy_scope is None or pod_namespace in copy_scope
                 else "the operator keeps copies only in the namespaces it watches (--namespace)")
        return _refuse(f"trackop: backend {ref_text} injects secrets ({', '.join(secrets)}) and namespace "
                       f"{pod_namespace} takes no copies of them: {where}", fail_closed)

    entries = _env_entries(backend, copy_secret_name(backend.namespace, backend.name))
    spec = pod.get("spec") or {}
    ops, warnings = _container_ops("containers", spec.get("containers") or [], entries)
    if annotations.get(INIT_ANNOTATION) == "true":
        init_ops, init_warnings = _container_ops("initContainers", spec.get("initContainers") or [], entries)
        ops += init_ops
        warnings += init_warnings
    if annotations.get(INJECTED_ANNOTATION) != ref_text:
        # /metadata/annotations exists (the backend annotation got us here); "add" also
        # replaces an existing member, so a stale value is corrected.
        ops.append({"op": "add", "path": f"/metadata/annotations/{json_pointer_token(INJECTED_ANNOTATION)}",
                    "value": ref_text})
    reason = f"injected {ref_text}" if ops else f"already injected {ref_text}"
    return Decision(allowed=True, patch=ops, warnings=warnings, reason=reason)
