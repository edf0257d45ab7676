"""Property: ``parse`` on any spec, however broken, returns a BackendSpec or raises a
SpecError that names the field first, never another exception (the operator and the
webhook catch only SpecError)."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_mutations import extras_sets, full_spec, immutable_changes, json_values, mutations

from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec, SpecError

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _parse(obj: dict):
    return parse("team-ns", obj["metadata"]["name"], obj["spec"])


def _check(obj: dict, mutation) -> None:
    try:
        parsed = _parse(obj)
    except SpecError as error:
        assert str(error).startswith(f"{error.field}: "), str(error)
        assert error.field.startswith(("spec.", "metadata.name")), error.field
        assert mutation is None or mutation.related(error.field), (error.field, mutation)
    else:
        assert isinstance(parsed, BackendSpec)


@SETTINGS
@given(extras=extras_sets, edits=st.lists(mutations(), min_size=1, max_size=2))
def test_parse_refuses_a_mutated_spec_only_with_a_spec_error(extras, edits):
    base = {"metadata": {"name": "team-a"}, "spec": full_spec("127.0.0.1", 5432, extras=extras)}
    assert isinstance(_parse(base), BackendSpec)
    obj = copy.deepcopy(base)
    for edit in edits:
        edit.apply(obj)
    # With two edits the error may be about either; with one it must be about that one.
    _check(obj, edits[0] if len(edits) == 1 else None)


@SETTINGS
@given(edit=immutable_changes())
def test_parse_takes_any_database_or_role_change(edit):
    # Immutability is the CRD's (CEL, oldSelf); parse sees one spec and accepts either name.
    obj = {"metadata": {"name": "team-a"}, "spec": full_spec("127.0.0.1", 5432, extras=("database",))}
    edit.apply(obj)
    _check(obj, edit)


@SETTINGS
@given(spec=json_values)
def test_parse_of_any_json_value_as_spec(spec):
    try:
        parse("team-ns", "team-a", spec if isinstance(spec, dict) else {"postgres": spec})
    except SpecError as error:
        assert str(error).startswith(f"{error.field}: ")


@settings(SETTINGS, max_examples=200)
@given(extras=extras_sets, edits=st.lists(mutations(), min_size=1, max_size=2))
def test_the_validating_webhook_answers_every_mutated_spec_naming_the_field(extras, edits):
    # An exception in the webhook is a 400 to the API server, which with failurePolicy
    # Ignore admits the object: every spec must get an answer.
    from trackop.webhook.index import Index
    from trackop.webhook.validation import validate_backend

    obj = {"metadata": {"name": "team-a", "namespace": "team-ns"}, "spec": full_spec("127.0.0.1", 5432, extras=extras)}
    for edit in edits:
        edit.apply(obj)
    allowed, message = validate_backend(obj, Index())
    assert allowed or message.startswith(("spec", "metadata.name")), message
