"""Who a container's process runs as, and the local directories behind a Pod's volumes (for
the local kubelet, kubelet.py).

- Volumes: ``emptyDir`` is a fresh directory per Pod (``WORKDIR/e/<uid[:8]>/<name>``, any
  medium); ``persistentVolumeClaim`` is a directory per claim,
  ``WORKDIR/pvc/<namespace>/<claimName>/<claim uid>``, that outlives the Pod (a
  StatefulSet's new Pod finds its data) while a claim made again under the same name (after
  ``whenDeleted: Delete``, say) starts empty, as a newly provisioned volume would; the
  claim must exist in the API (it may stay Pending: the bed has no provisioner). The
  automatic service-account token volume is ignored; anything else is refused rather than
  faked. Unix socket paths are limited to 107 bytes: keep WORKDIR short
  when a Pod puts a socket in a volume.
- Users: ``runAsNonRoot`` with ``runAsUser: 0`` is refused. With ``run_as_users`` (always
  for :meth:`LocalKubelet.supervise_statefulset`, off by default elsewhere because this
  machine's Python lives under a 0700 ``/root``), the process runs as ``runAsUser`` and
  ``runAsGroup`` (container over Pod; gid 0 when only the uid is set, as for a uid the
  image does not know) with ``fsGroup`` and ``supplementalGroups`` as its only extra
  groups; ``runAsNonRoot`` without ``runAsUser`` is then refused (the image's USER is
  unknown here). Volume directories are owned by ``runAsUser`` and, as the kubelet does
  for ``fsGroup``, by that group with group rwx and setgid (on the volume's top directory
  only, like ``fsGroupChangePolicy: OnRootMismatch`` on a fresh volume); WORKDIR's parent
  directories get o+x so the uid can reach them. Capabilities, seccomp and
  ``allowPrivilegeEscalation`` are not applied (a non-root uid has no capabilities anyway).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from .kubelet_errors import LocalKubeletError


@dataclass
class Identity:
    """Who the container's process runs as (no identity: as the kubelet itself)."""

    uid: int
    gid: int
    groups: list[int]


def run_as(pod: client.V1Pod, container: client.V1Container, honour: bool) -> Identity | None:
    """Who the container's process runs as (``honour``: the kubelet's ``run_as_users``); None: as
    the local kubelet's own user. Refuses what the kubelet refuses, and uids it cannot switch to."""
    psc = pod.spec.security_context or client.V1PodSecurityContext()
    csc = container.security_context or client.V1SecurityContext()

    def pick(name: str):
        own = getattr(csc, name)
        return own if own is not None else getattr(psc, name)

    uid, gid, non_root = pick("run_as_user"), pick("run_as_group"), pick("run_as_non_root")
    where = f"Pod {pod.metadata.namespace}/{pod.metadata.name} container {container.name!r}"
    if non_root and uid == 0:
        raise LocalKubeletError(f"{where}: runAsNonRoot is set and runAsUser is 0 (the kubelet refuses it too)")
    groups = sorted({g for g in [psc.fs_group, *(psc.supplemental_groups or [])] if g is not None})
    if not honour or (uid is None and gid is None and not groups and not non_root):
        return None
    if uid is None:
        if non_root:
            raise LocalKubeletError(
                f"{where}: runAsNonRoot without runAsUser: the image's USER is unknown to the local kubelet")
        uid = 0
    identity = Identity(uid, 0 if gid is None else gid, groups)
    if os.geteuid() != 0:  # not root: only this process's own uid and gid (and its own groups)
        if (identity.uid, identity.gid) != (os.geteuid(), os.getegid()):
            raise LocalKubeletError(f"{where}: running as uid {uid} needs the local kubelet to run as root")
        return None
    return identity


def _own(path: Path, identity: Identity | None, fs_group: int | None) -> None:
    """Ownership of a volume's directory: runAsUser, and fsGroup (else runAsGroup) with
    group rwx and setgid when fsGroup is set, as the kubelet sets a volume up."""
    if identity is not None and os.geteuid() == 0:
        os.chown(path, identity.uid, identity.gid if fs_group is None else fs_group)
    elif fs_group is not None and os.geteuid() == 0:
        os.chown(path, -1, fs_group)
    if fs_group is not None:
        path.chmod(path.stat().st_mode & 0o7777 | 0o2070)


def make_reachable(path: Path) -> None:
    """o+x on ``path`` and every parent, so a non-root uid can reach it (tempfile's
    directories are 0700)."""
    for part in [path, *path.parents]:
        mode = part.stat().st_mode & 0o7777
        if not mode & 0o001:
            part.chmod(mode | 0o001)


def prepare_volumes(core: client.CoreV1Api, workdir: Path, pod: client.V1Pod,
                    identity: Identity | None) -> dict[str, Path]:
    """The local directory of each of the Pod's volumes (name -> path), made and owned as the
    kubelet sets volumes up."""
    namespace = pod.metadata.namespace
    fs_group = (pod.spec.security_context or client.V1PodSecurityContext()).fs_group
    volumes: dict[str, Path] = {}
    for volume in pod.spec.volumes or []:
        if volume.projected is not None and volume.name.startswith("kube-api-access-"):
            continue
        if volume.empty_dir is not None:
            path = workdir / "e" / pod.metadata.uid[:8] / volume.name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)  # as the kubelet makes an emptyDir
        elif volume.persistent_volume_claim is not None:
            claim = volume.persistent_volume_claim.claim_name
            try:
                pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
            except client.ApiException as exc:
                if exc.status == 404:
                    raise LocalKubeletError(
                        f"volume {volume.name!r}: PersistentVolumeClaim {namespace}/{claim} not found") from None
                raise
            if pvc.metadata.deletion_timestamp is not None:
                raise LocalKubeletError(f"volume {volume.name!r}: PersistentVolumeClaim {namespace}/{claim} "
                                        "is being deleted")
            path = workdir / "pvc" / namespace / claim / pvc.metadata.uid
            if not path.exists():
                path.mkdir(parents=True)
                path.chmod(0o750)
        else:
            raise LocalKubeletError(f"volume {volume.name!r} is not supported by the local kubelet "
                                    "(only emptyDir and persistentVolumeClaim)")
        _own(path, identity, fs_group)
        volumes[volume.name] = path
    return volumes


def check_volumes(pod: client.V1Pod) -> None:
    """Refuse a Pod with a volume other than emptyDir, persistentVolumeClaim and the token."""
    for volume in pod.spec.volumes or []:
        token = volume.projected is not None and volume.name.startswith("kube-api-access-")
        if volume.empty_dir is None and volume.persistent_volume_claim is None and not token:
            raise LocalKubeletError(f"volume {volume.name!r} is not supported by the local kubelet "
                                    "(only emptyDir and persistentVolumeClaim)")
