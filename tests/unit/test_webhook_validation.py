"""trackop.webhook.validation: the validating webhook's decision for a TrackingBackend (pure)."""

from __future__ import annotations

from trackop.webhook.index import Index
from trackop.webhook.injection import BackendView
from trackop.webhook.validation import validate_backend, validate_request

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


# ---- which requests are judged: only a change of spec ----------------------------------------

# Valid when it was stored; refused by today's rules (a tightened parse).
STORED_BAD = {**SPEC, "artifacts": {"s3": {"bucket": "a..b"}}}


def request(operation: str, spec: dict | None, old_spec: dict | None = None, **meta) -> dict:
    req = {"uid": "u", "operation": operation, "object": {**body(spec=spec), "metadata": {**body()["metadata"], **meta}}}
    if old_spec is not None:
        req["oldObject"] = body(spec=old_spec)
    return req


def test_a_delete_is_always_admitted():
    assert validate_request({"uid": "u", "operation": "DELETE", "oldObject": body(spec=STORED_BAD)}, Index()) \
        == (True, "")


def test_an_update_that_leaves_a_bad_stored_spec_as_it_was_is_admitted():
    # Finalizer removal, labels, annotations (kopf's own): the backend can still be deleted.
    for meta in ({"finalizers": []}, {"labels": {"team": "a"}}, {"annotations": {"kopf.zalando.org/x": "{}"}}):
        assert validate_request(request("UPDATE", STORED_BAD, STORED_BAD, **meta), Index()) == (True, "")


def test_an_update_that_changes_the_spec_is_judged_on_the_new_spec():
    allowed, message = validate_request(request("UPDATE", {**STORED_BAD, "deletionPolicy": "Delete"}, STORED_BAD),
                                        Index())
    assert not allowed and message.startswith("spec.artifacts.s3.bucket: ")
    # Fixing the field of a stored bad spec is a change too, and admitted.
    fixed = {**STORED_BAD, "artifacts": {"s3": {"bucket": "a-b"}}}
    assert validate_request(request("UPDATE", fixed, STORED_BAD), Index()) == (True, "")
    assert not validate_request(request("UPDATE", STORED_BAD, fixed), Index())[0]


def test_a_create_is_judged():
    allowed, message = validate_request(request("CREATE", STORED_BAD), Index())
    assert not allowed and "spec.artifacts.s3.bucket" in message
    assert validate_request(request("CREATE", SPEC), Index()) == (True, "")


def test_an_update_without_an_old_object_is_judged():
    assert not validate_request(request("UPDATE", STORED_BAD), Index())[0]


def test_an_unchanged_spec_skips_the_database_owner_check_too():
    # Nothing changed, so nothing new can clash; a clash that exists is the reconcile's to report.
    index = Index()
    index.set_backend(BackendView("ns", "b", "Direct", None, ()), ("pg.db.svc", 5432, "mlflow_a"))
    assert validate_request(request("UPDATE", SPEC, SPEC), index) == (True, "")
    assert not validate_request(request("UPDATE", {**SPEC, "deletionPolicy": "Delete"}, SPEC), index)[0]
