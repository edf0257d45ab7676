"""What a reconcile carries from step to step and hands back to the handlers."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ..api import conditions as cond
from ..api.conditions import Condition
from ..api.v1alpha1 import BackendSpec, PostgresEndpoint
from ..specs.progress import Progress


class StepFailed(Exception):
    """A step could not complete; carries the condition that says why."""

    def __init__(self, condition_type: str, reason: str, message: str, retry_after: float = 10,
                 backoff: bool = True, warn: bool | None = None) -> None:
        super().__init__(message)
        self.condition_type = condition_type
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # Progress (a rollout, a server starting) is polled at the pace its verdict gives
        # (specs.progress), not backed off; the drift timer keeps to that pace too.
        self.backoff = backoff
        # A new cause posts one Warning; progress only once it is stuck.
        self.warn = backoff if warn is None else warn


def progress_failure(progress: Progress) -> StepFailed:
    """A wait that is not done yet: polled at its own pace, a Warning once it is stuck."""
    return StepFailed(progress.condition_type, progress.reason, progress.message, progress.poll_after,
                      backoff=False, warn=progress.stuck)


UNEXPECTED_RETRY_SECONDS = 30.0


def unexpected_failure(condition_type: str, exc: BaseException) -> StepFailed:
    """A step that raised what no step expects (a bug, or a spec value a builder refuses
    although ``parse`` let it through) as a failed step: a condition naming the error and
    where it happened, retried with backoff. Only this backend stops; the handler does not
    raise, so kopf neither logs a traceback per retry nor retries on its own schedule."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f" in {PurePath(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return StepFailed(condition_type, "ReconcileError",
                      f"{type(exc).__name__}{where}: {str(exc)[:500]}. Only this backend is affected: fix "
                      "the field the message names, or report it as a trackop bug with this message; "
                      "trackop retries with backoff", UNEXPECTED_RETRY_SECONDS)


@dataclass
class Outcome:
    """What a reconcile found and did; the handlers turn it into status and Events."""

    conditions: list[Condition]
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    retry_after: float | None = None  # None: converged
    backoff: bool = True

    @property
    def ready(self) -> bool:
        return any(c.type == cond.READY and c.status == "True" for c in self.conditions)


@dataclass
class Context:
    """One reconcile of one backend: its spec, what the steps learned, the Events they post."""

    spec: BackendSpec
    owner: Mapping[str, Any]
    previous_status: Mapping[str, Any]
    secrets: set[str] = field(default_factory=set)   # every secret value seen: redacted from messages
    events: list[tuple[str, str, str]] = field(default_factory=list)
    # Where the operator itself connects: spec.postgres, or a managed server's pod address
    # when the operator runs outside the cluster's Service network.
    reach: PostgresEndpoint | None = None
    admin_login: tuple[str, str] | None = None   # (user, password) from the admin Secret
    cloned: tuple[str, float] | None = None      # (template, seconds) when this reconcile cloned the database
    not_cloned: str | None = None                # why a new database was not cloned (then migrated in place)

    def __post_init__(self) -> None:
        if self.reach is None:
            self.reach = self.spec.postgres

    def did(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))
