"""Progress that does not progress (pure): how long a tracking server's rollout or a managed
server's start has stood still, whether it is stuck and why, and how soon to look again.

A wait is polled every FAST_POLL_SECONDS for its first FAST_POLL_WINDOW without progress,
then every tenth of the time it has stood still, and once stuck every SLOW_POLL_SECONDS:
each look is a full reconcile (a role login, a bucket probe), so a stuck wait costs one a
minute, not one every 3 s. Stuck, which posts one Warning, is:

* for the tracking server's Deployment, what the deployment controller says: Progressing
  False with reason ProgressDeadlineExceeded, after spec.server.progressDeadlineSeconds
  (default 600 s, Kubernetes' own) without progress. The clock is that condition's
  lastUpdateTime, which the controller moves on every step of progress, or ServerReady
  going False if that is later;
* for a managed server's pod, a container the kubelet cannot start (its image cannot be
  pulled, its configuration is missing) or that keeps exiting, at once; else not ready
  STARTUP_DEADLINE_SECONDS after the latest of: the server object's and its pod's
  creation, and the PostgresReady condition going False.

The verdicts are functions of the observed objects (as plain dicts), their pods, the
previous condition's lastTransitionTime and the time now; the steps fetch and apply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..api import conditions as cond
from ..api.v1alpha1 import BackendSpec

FAST_POLL_SECONDS = 3.0
FAST_POLL_WINDOW = 60.0
SLOW_POLL_SECONDS = 60.0
# A managed server's startupProbe allows 120 x 5 s to start (specs.managed_server): the same here.
STARTUP_DEADLINE_SECONDS = 600.0
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # the deployment controller's reason, and trackop's
_DETAIL_CHARACTERS = 300

_IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
_CONFIG = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(frozen=True)
class Progress:
    """A wait's verdict, which becomes its condition."""

    condition_type: str
    ready: bool
    reason: str
    message: str
    stalled_for: float = 0.0   # seconds since it last moved
    stuck: bool = False        # it will not move by itself: one Warning, and the slow poll

    @property
    def poll_after(self) -> float:
        return poll_delay(self.stalled_for, self.stuck)

    @property
    def looks_stalled(self) -> bool:
        """Worth reading the pods for (their waiting reasons say why)."""
        return not self.ready and (self.stuck or self.stalled_for >= FAST_POLL_WINDOW)


def poll_delay(stalled_for: float, stuck: bool) -> float:
    """Seconds until the next look at a wait that has not moved for ``stalled_for``."""
    if stuck:
        return SLOW_POLL_SECONDS
    if stalled_for < FAST_POLL_WINDOW:
        return FAST_POLL_SECONDS
    return min(SLOW_POLL_SECONDS, max(FAST_POLL_SECONDS, stalled_for / 10))


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def seconds_since(times: Iterable[Any], now: dt.datetime) -> float:
    """Seconds from the latest of ``times`` (RFC 3339 strings or datetimes; unreadable ones
    ignored) to ``now``; 0 when there is none."""
    known = [t for t in (_time(value) for value in times) if t is not None]
    return max(0.0, (now - max(known)).total_seconds()) if known else 0.0


def false_since(previous_conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> str | None:
    """When the condition ``type_`` went False, if it is False."""
    found = next((c for c in previous_conditions or [] if c.get("type") == type_), None)
    return found.get("lastTransitionTime") if found and found.get("status") == "False" else None


@dataclass(frozen=True)
class PodTrouble:
    """Why a pod's container will not start or keeps exiting, as the kubelet reports it."""

    reason: str
    message: str


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARACTERS else text[:_DETAIL_CHARACTERS - 3] + "..."


def _container_trouble(pod: str, container: Mapping[str, Any]) -> PodTrouble | None:
    name = container.get("name")
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    said = f" ({_short(waiting['message'])})" if waiting.get("message") else ""
    if reason in _IMAGE_PULL:
        return PodTrouble("ImagePullBackOff",
                          f"pod {pod} container {name} cannot pull image {container.get('image')}: {reason}{said}")
    if reason in _CONFIG:
        return PodTrouble("ContainerConfigError", f"pod {pod} container {name} cannot be created: {reason}{said}")
    last = (container.get("lastState") or {}).get("terminated")
    restarts = container.get("restartCount") or 0
    # Between restarts a crash-looping container is briefly running or terminated, not
    # waiting: its restarts and last exit say it all the same.
    if reason == "CrashLoopBackOff" or (last and restarts > 0 and not container.get("ready")):
        exit_ = f"exit code {last.get('exitCode')}" + (f" ({last['reason']})" if last.get("reason") else "") \
            if last else "an exit"
        return PodTrouble("CrashLoopBackOff", f"pod {pod} container {name} keeps exiting ({restarts} restarts, "
                                              f"last {exit_}): kubectl logs {pod} -c {name} --previous")
    return None


def pod_trouble(pods: Iterable[Mapping[str, Any]]) -> PodTrouble | None:
    """The first container (init containers first) of ``pods`` that cannot start or keeps
    exiting; None if none does (a pod that is pending or starting is not in trouble)."""
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
            trouble = _container_trouble(meta.get("name", "?"), container)
            if trouble is not None:
                return trouble
    return None


def pod_state(pods: Iterable[Mapping[str, Any]]) -> str:
    """What the first pod is doing, for a message: its phase and why it is not scheduled
    or what its containers wait for ('' without pods)."""
    for pod in pods:
        name, status = (pod.get("metadata") or {}).get("name", "?"), pod.get("status") or {}
        scheduled = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if scheduled and scheduled.get("status") == "False":
            return f"pod {name} is not scheduled ({scheduled.get('reason')}: {_short(scheduled.get('message') or '')})"
        waiting = [f"{c.get('name')} {c['state']['waiting'].get('reason')}"
                   for c in status.get("containerStatuses") or [] if (c.get("state") or {}).get("waiting")]
        return f"pod {name} is {status.get('phase') or 'Pending'}" + (f" ({', '.join(waiting)})" if waiting else "")
    return ""


def rollout_progress(spec: BackendSpec, deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]],
                     now: dt.datetime, false_since: str | None = None) -> Progress:
    """The tracking server's Deployment: Available, RollingOut, or ProgressDeadlineExceeded
    as the deployment controller says. It has stood still since the controller's last
    progress or since ServerReady went False (``false_since``; None: just now), whichever
    is later: a server that was available has not stood still since its last rollout."""
    server, name = spec.tracking_server, spec.tracking_server_name
    meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
    updated, available = status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0
    observed = (status.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    if observed and updated >= server.replicas and available >= 1:
        return Progress(cond.SERVER_READY, True, "Available",
                        f"{available}/{server.replicas} replicas available at {spec.tracking_server_uri}")
    shown = f"Deployment {name}: {updated}/{server.replicas} updated, {available} available"
    trouble = pod_trouble(pods)
    seen = f"; {trouble.message}" if trouble else (f"; {pod_state(pods)}" if pods else "")
    # Before the controller has seen the latest template, its conditions are about the last one.
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None) \
        if observed else None
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == DEADLINE_EXCEEDED:
        return Progress(cond.SERVER_READY, False, "ProgressDeadlineExceeded",
                        f"{shown}: no progress for {server.progress_deadline}s (spec.server.progressDeadlineSeconds; "
                        f"{_short(progressing.get('message') or '')}){seen}; see kubectl -n {spec.namespace} describe "
                        f"deployment {name} and its pods' logs (an image that cannot be pulled, or one without the "
                        "PostgreSQL driver, never gets ready); checked again every minute",
                        stalled_for=seconds_since([progressing.get("lastUpdateTime")], now), stuck=True)
    stalled = seconds_since([progressing.get("lastUpdateTime"), false_since or now], now) if progressing else 0.0
    return Progress(cond.SERVER_READY, False, "RollingOut", shown + seen, stalled_for=stalled)


def stalled(waiting: Progress, pods: Sequence[Mapping[str, Any]], started: Iterable[Any], now: dt.datetime,
            fix: str) -> Progress:
    """A managed server's wait (Starting, Restarting), with what its pods say: stuck at once
    on a pod in trouble, or after STARTUP_DEADLINE_SECONDS from the latest of ``started``
    and the pods' creation. ``fix`` is the hint for a pod in trouble."""
    stalled_for = seconds_since([*started, *((p.get("metadata") or {}).get("creationTimestamp") for p in pods)], now)
    trouble = pod_trouble(pods)
    if trouble is not None:
        return Progress(waiting.condition_type, False, trouble.reason, f"{trouble.message}; {fix}",
                        stalled_for=stalled_for, stuck=True)
    if stalled_for >= STARTUP_DEADLINE_SECONDS:
        state = pod_state(pods) or "it has no pod yet"
        return Progress(waiting.condition_type, False, "ProgressDeadlineExceeded",
                        f"{waiting.message}; not ready {STARTUP_DEADLINE_SECONDS:.0f}s after it started: {state}; "
                        "checked again every minute", stalled_for=stalled_for, stuck=True)
    return replace(waiting, stalled_for=stalled_for)
