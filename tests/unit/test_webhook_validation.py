"""trackop.webhook.validation: the validating webhook's decision for a TrackingBackend (pure)."""

from __future__ import annotations

from trackop.webhook.index import Index
from trackop.webhook.injection import BackendView
from trackop.webhook.validation import validate_backend

SPEC = {"postgres": {"external": {"host": "pg.db.svc", "adminSecretRef": {"name": "pg-admin"}},
                     "database": "mlflow_a"}}


def body(name: str = "a", namespace: str = "ns", spec: dict | None = None) -> dict:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec or SPEC}


def test_validation_accepts_a_good_spec_and_names_the_field_of_a_bad_one():
    index = Index()
    assert validate_backend(body(), index) == (True, "")
    ok, message = validate_backend(body(spec={**SPEC, "postgres": {**SPEC["postgres"], "database": "Bad"}}), index)
    assert not ok and message.startswith("spec.postgres.database")


def test_validation_refuses_a_second_backend_on_the_same_database_but_not_the_same_one():
    index = Index()
    index.set_backend(BackendView("ns", "a", "Direct", None, ()), ("pg.db.svc", 5432, "mlflow_a"))
    assert validate_backend(body("a"), index)[0], "an update of the owner itself"
    ok, message = validate_backend(body("b"), index)
    assert not ok and "already used by TrackingBackend ns/a" in message


def test_validation_refuses_a_malformed_namespace_selector():
    spec = {**SPEC, "injection": {"namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}}
    ok, message = validate_backend(body(spec=spec), Index())
    assert not ok and message.startswith("spec.injection.namespaceSelector")
