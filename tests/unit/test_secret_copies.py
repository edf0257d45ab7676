"""controller.copies.SecretCopies against a recording fake of Kube: copies hold only
secrets, go only where a namespace opts in (or the backend's own), none in Server mode."""

from __future__ import annotations

from helpers import make_spec

from trackop.api.v1alpha1 import SECRET_COPIES_LABEL
from trackop.controller.copies import SecretCopies
from trackop.controller.listing import SharedListing
from trackop.specs.connection_secret import connection_secret_data
from trackop.webhook.injection import copy_secret_name

NAMESPACES = {"ml-platform": {}, "team-a": {"team": "a"},
              "team-b": {"team": "a", SECRET_COPIES_LABEL: "true"}, "other": {SECRET_COPIES_LABEL: "true"}}
COPY = copy_secret_name("ml-platform", "team-a")


class FakeKube:
    def __init__(self, existing: dict | None = None) -> None:
        self.existing = dict(existing or {})
        self.puts: dict[str, dict] = {}
        self.deleted: list[tuple[str, str]] = []
        self.listed_in: list = []

    def secrets_by_label(self, selector, namespaces=None):
        self.listed_in.append(namespaces)
        return {k: v for k, v in self.existing.items() if namespaces is None or k[0] in namespaces}

    def put_secret(self, body):
        self.puts[body["metadata"]["namespace"]] = body["stringData"]

    def delete_secret(self, namespace, name):
        self.deleted.append((namespace, name))


def copies(kube: FakeKube, scope=None) -> SecretCopies:
    return SecretCopies(kube, SharedListing(lambda: NAMESPACES, 60), SharedListing(list, 60), "trackop-system", scope)


def spec(mode: str, **overrides):
    return make_spec({"injection": {"mode": mode, "namespaceSelector": {"matchLabels": {"team": "a"}}},
                      **({"server": {}} if mode == "Server" else {}), **overrides})


def test_direct_mode_copies_only_secrets_to_its_own_and_opted_in_namespaces():
    kube, events = FakeKube(), []
    backend = spec("Direct")
    data = connection_secret_data(backend, "pw-123")
    copies(kube).sync(backend, data, lambda reason, message: events.append((reason, message)))
    assert set(kube.puts) == {"ml-platform", "team-b"}, "team-a is admitted but has not opted in; other is not admitted"
    assert kube.puts["team-b"] == {"MLFLOW_TRACKING_URI": data["MLFLOW_TRACKING_URI"]}, "only the secret"
    assert all("pw-123" not in message for _, message in events)


def test_server_mode_makes_no_copy_and_removes_the_stale_ones():
    kube, events = FakeKube({("team-b", COPY): {"MLFLOW_TRACKING_URI": "http://x"},
                             ("ml-platform", COPY): {"MLFLOW_TRACKING_URI": "http://x"}}), []
    backend = spec("Server")
    copies(kube).sync(backend, connection_secret_data(backend, "pw"), lambda r, m: events.append((r, m)))
    assert kube.puts == {} and sorted(kube.deleted) == [("ml-platform", COPY), ("team-b", COPY)]
    assert {r for r, _ in events} == {"SecretCopyRemoved"}
    assert all("Server mode injects no secret" in m for _, m in events)


def test_a_namespace_that_drops_the_label_loses_its_copy():
    kube, events = FakeKube({("team-a", COPY): {"MLFLOW_TRACKING_URI": "postgresql://..."}}), []
    backend = spec("Direct")
    copies(kube).sync(backend, connection_secret_data(backend, "pw"), lambda r, m: events.append((r, m)))
    assert ("team-a", COPY) in kube.deleted
    assert any(f"not labelled {SECRET_COPIES_LABEL}=true" in m for r, m in events if r == "SecretCopyRemoved")


def test_with_a_scope_copies_are_listed_and_placed_only_there():
    kube = FakeKube()
    backend = spec("Direct")
    copies(kube, frozenset({"ml-platform", "other"})).sync(backend, connection_secret_data(backend, "pw"))
    assert kube.listed_in == [["ml-platform", "other"]], "namespaced LISTs, never the cluster-wide one"
    assert set(kube.puts) == {"ml-platform"}, "team-b opted in but is outside the operator's namespaces"
