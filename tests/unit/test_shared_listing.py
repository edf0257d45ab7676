"""The cluster-wide LISTs the drift checks of all backends share (controller.listing.SharedListing):
one fetch per interval, a fresh one after a watch event, nothing cached from a failure, one
fetch for concurrent callers; and the Reconciler's copies and missed-injection checks use them."""

from __future__ import annotations

import threading

import pytest

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec
from trackop.controller.listing import SharedListing
from trackop.controller.reconciler import Reconciler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counting(values):
    calls = []

    def fetch():
        calls.append(1)
        return values[min(len(calls) - 1, len(values) - 1)]

    return fetch, calls


def test_one_fetch_per_ttl():
    clock = Clock()
    fetch, calls = counting(["a", "b", "c"])
    shared = SharedListing(fetch, ttl=60, clock=clock)
    assert [shared.get() for _ in range(5)] == ["a"] * 5
    clock.now += 59.9
    assert shared.get() == "a" and len(calls) == 1
    clock.now += 0.1
    assert shared.get() == "b" and len(calls) == 2


def test_invalidate_fetches_again_at_once():
    clock = Clock()
    fetch, calls = counting(["before", "after"])
    shared = SharedListing(fetch, ttl=60, clock=clock)
    assert shared.get() == "before"
    shared.invalidate()
    assert shared.get() == "after" and len(calls) == 2


def test_ttl_zero_shares_nothing():
    fetch, calls = counting(["x"])
    shared = SharedListing(fetch, ttl=0)
    for _ in range(3):
        shared.get()
    assert len(calls) == 3


def test_a_failed_fetch_is_not_cached():
    clock = Clock()
    attempts = []

    def fetch():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("API server down")
        return "listed"

    shared = SharedListing(fetch, ttl=60, clock=clock)
    with pytest.raises(ConnectionError):
        shared.get()
    assert shared.get() == "listed" and len(attempts) == 2


def test_concurrent_callers_wait_for_one_fetch():
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_fetch():
        calls.append(1)
        started.set()
        release.wait(5)
        return "listed"

    shared = SharedListing(slow_fetch, ttl=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(shared.get())) for _ in range(6)]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(5)
    assert results == ["listed"] * 6 and len(calls) == 1


class ListingKube:
    """Counts the cluster-wide LISTs; keeps the copies it is given."""

    def __init__(self) -> None:
        self.lists = {"namespaces": 0, "pods": 0}
        self.puts = []

    def namespace_labels(self):
        self.lists["namespaces"] += 1
        return {"team-a": {"team": "a"}, "team-b": {"team": "b"}}

    def pods_by_label(self, selector):
        self.lists["pods"] += 1
        return []

    def secrets_by_label(self, selector):
        return {}

    def put_secret(self, body):
        self.puts.append((body["metadata"]["namespace"], body["metadata"]["name"]))

    def delete_secret(self, namespace, name):
        pass


def spec(name: str) -> BackendSpec:
    return parse("team-a", name, {"postgres": {"external": {"host": "h", "adminSecretRef": {"name": "a"}}},
                                      "injection": {"namespaceSelector": {"matchLabels": {"team": "a"}}}})


def test_many_backends_share_one_list_of_namespaces_and_of_pods_per_interval():
    kube = ListingKube()
    reconciler = Reconciler(kube, "trackop-system", shared_list_ttl=60)
    for i in range(10):
        backend = spec(f"b{i}")
        reconciler.copies.sync(backend, {"MLFLOW_TRACKING_URI": "postgresql://u:pw@h/d", "PGPASSWORD": "pw"})
        assert reconciler.copies.missed_injections(backend) == []
    assert kube.lists == {"namespaces": 1, "pods": 1}
    assert len(kube.puts) == 10  # each backend's copy still placed, in the namespace its selector admits
    reconciler.namespaces.invalidate()
    reconciler.copies.sync(spec("late"), {"PGPASSWORD": "pw", "PGHOST": "h"})
    assert kube.lists["namespaces"] == 2
