"""One read that all backends share (a cluster-wide LIST, a server's catalog snapshot)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class SharedListing:
    """One read that every backend's reconcile or drift check shares (a cluster-wide LIST,
    a server's catalog snapshot): fetched at most once per ``ttl`` seconds (0: every call,
    as without sharing), again after :meth:`invalidate` (a watch event said it changed), and
    again for a caller that needs a value fetched after ``not_before`` (its fingerprint is
    newer). Concurrent callers wait for one fetch, not one each."""

    def __init__(self, fetch: Callable[[], Any], ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: Any = None
        self._fetched_at: float | None = None
        self.fetches = 0
        self.changes = 0  # fetches that found a value different from the one before

    def get(self, not_before: float = float("-inf")) -> Any:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or self.ttl <= 0 or now - self._fetched_at >= self.ttl \
                    or self._fetched_at < not_before:
                value = self._fetch()  # an API error propagates and nothing is cached
                if self._fetched_at is not None and value != self._value:
                    self.changes += 1
                self._value = value
                self._fetched_at = now
                self.fetches += 1
            return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._fetched_at = None
