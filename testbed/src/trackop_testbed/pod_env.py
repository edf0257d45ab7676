"""A container's environment, resolved from the API server as the kubelet does, and the
translation of its mount paths to local directories (for the local kubelet, kubelet.py).

Env: ``value`` with ``$(VAR)`` expansion, ``secretKeyRef``, ``configMapKeyRef``,
``fieldRef`` (the Pod's IPs are loopback's), ``envFrom`` with prefixes; what the kubelet
would refuse (a missing Secret or key that is not optional) raises LocalKubeletError.

Filesystem: the process sees this machine's filesystem, not the container's, so the
container's ``volumeMounts`` are honoured by path translation: in env values, command,
args and exec probe commands, a ``mountPath`` (or ``mountPath/...``) that is a whole
argument or comes right after a ``=`` (``unix_socket_directories=/var/run/postgresql``)
is replaced by the local directory backing that volume (longest mountPath first;
``subPath`` honoured). Paths the program builds itself are not translated, and
``readOnly`` and ``readOnlyRootFilesystem`` are not enforced.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable

from kubernetes import client

from trackop.kube.client import Kube

from .kubelet_errors import LocalKubeletError

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, unknown stay."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def translator(mounts: dict[str, Path]) -> Callable[[str], str]:
    """Path translation for a container's mounts (mountPath -> local directory): a
    mountPath, or a path under it, as the whole text or right after a ``=``."""
    paths = sorted((p.rstrip("/") for p in mounts if p.rstrip("/")), key=len, reverse=True)
    if not paths:
        return lambda text: text
    local = {p.rstrip("/"): str(d) for p, d in mounts.items()}
    pattern = re.compile(r"(^|=)(" + "|".join(re.escape(p) for p in paths) + r")(?=/|$)")
    return lambda text: pattern.sub(lambda m: m.group(1) + local[m.group(2)], text)


def _config_map_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    try:
        return dict(core.read_namespaced_config_map(name, namespace).data or {})
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _field(pod: client.V1Pod, path: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name or "",
        "spec.serviceAccountName": pod.spec.service_account_name or "",
        "status.podIP": "127.0.0.1",
        "status.podIPs": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return simple[path] or ""
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        source = (meta.labels if match.group(1) == "labels" else meta.annotations) or {}
        return source.get(match.group(2), "")
    raise LocalKubeletError(f"fieldRef {path!r} is not supported by the local kubelet")


def resolve_env(kube: Kube, pod: client.V1Pod, container: client.V1Container) -> dict[str, str]:
    """The container's environment, resolved from the API server as the kubelet does."""
    secret_data, config_map_data = kube.read_secret, functools.partial(_config_map_data, kube.core)
    namespace = pod.metadata.namespace
    env: dict[str, str] = {}
    for source in container.env_from or []:
        prefix = source.prefix or ""
        if source.secret_ref is not None:
            data, ref, kind = secret_data(namespace, source.secret_ref.name), source.secret_ref, "Secret"
        else:
            data, ref, kind = (config_map_data(namespace, source.config_map_ref.name),
                               source.config_map_ref, "ConfigMap")
        if data is None:
            if ref.optional:
                continue
            raise LocalKubeletError(f"envFrom: {kind} {namespace}/{ref.name} not found")
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = expand(var.value or "", env)
            continue
        ref = var.value_from
        if ref.secret_key_ref is not None or ref.config_map_key_ref is not None:
            key_ref = ref.secret_key_ref or ref.config_map_key_ref
            kind = "Secret" if ref.secret_key_ref is not None else "ConfigMap"
            data = (secret_data if kind == "Secret" else config_map_data)(namespace, key_ref.name)
            if data is None or key_ref.key not in data:
                if key_ref.optional:
                    continue
                raise LocalKubeletError(
                    f"env {var.name}: {kind} {namespace}/{key_ref.name} key {key_ref.key!r} not found")
            env[var.name] = data[key_ref.key]
        elif ref.field_ref is not None:
            env[var.name] = _field(pod, ref.field_ref.field_path)
        else:
            raise LocalKubeletError(f"env {var.name}: resourceFieldRef is not supported by the local kubelet")
    return env
