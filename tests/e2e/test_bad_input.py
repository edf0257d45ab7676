"""Bad input, generated: mutated TrackingBackend specs sent through the real API server with
the operator (and its validating webhook) running.

Every generated spec ends one of three ways, within a bounded time:
- refused by the API server (the CRD's schema and CEL rules, or strict field validation)
  or by trackop's validating webhook, with a message that names the edited field;
- accepted, and Ready;
- accepted, and Ready=False with a reason that docs/troubleshooting.md lists; then the
  operator must not loop on it (its reconcile count over a few seconds stays small).
Throughout, the operator stays up and writes no Python traceback to its log.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from kubernetes import client
from psycopg import sql

import kit
from helpers import eventually
from kit import GROUP, PLURAL, VERSION, Admin, Backends, OperatorProcess
from spec_mutations import Mutation, conflicts, extras_sets, full_spec, immutable_changes, mutations, unknown_fields

from trackop.specs.webhook_configurations import VALIDATING_NAME
from trackop_testbed.crd import crd_path, install_crd

pytestmark = pytest.mark.bed

TROUBLESHOOTING = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
SETTLE_TIMEOUT = 60       # seconds from acceptance to a Ready condition for the new generation
LOOP_WINDOW = 3.0         # seconds over which a failing backend's reconciles are counted
MAX_RECONCILES_IN_WINDOW = 4  # retries back off from 1-15 s; the drift timer runs every 3 s
FINALIZER = "trackop.dev/finalizer"  # the operator's (controller/kopf_settings.py)

_counter = itertools.count(1)


def documented_reasons() -> set[str]:
    """The first column of every table in docs/troubleshooting.md."""
    return set(re.findall(r"^\| `([A-Za-z]+)` \|", TROUBLESHOOTING.read_text(), re.MULTILINE))


def _rejection_text(exc: client.ApiException) -> str:
    """The API server's message and the field paths of its causes."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return str(exc.body)
    causes = (body.get("details") or {}).get("causes") or []
    return " ".join([body.get("message", ""), *(f"{c.get('field', '')} {c.get('message', '')}" for c in causes)])


_TEST_NAMESPACE = re.compile(r"\bt-[0-9a-f]{10}\b")  # tests/conftest.py's namespace fixture
_API_OBJECT = re.compile(r'"details":\{"name":"([^"]+)"')  # in a Status body the API server returned


def _traceback_blocks(log: str) -> list[str]:
    """Each traceback with the log record it belongs to: from the record's first line (kopf
    puts the exception's message and HTTP body before the traceback) to the next record."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[20")]
    blocks = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            first = max((s for s in starts if s <= i), default=0)
            last = min((s for s in starts if s > i), default=len(lines))
            blocks.append("\n".join(lines[first:last]))
    return blocks


def _reconciles(operator: OperatorProcess) -> float:
    return sum(v for k, v in operator.metrics().items() if k.startswith("trackop_reconciles_total"))


class Bench:
    """One test's namespace, admin and operator, and the checks every example ends with."""

    def __init__(self, backends: Backends, admin: Admin, operator: OperatorProcess, superuser_conn, bed_info: dict):
        self.backends, self.admin, self.operator, self.superuser = backends, admin, operator, superuser_conn
        self.s3_endpoint = bed_info["s3"]["endpoint"]
        self.reasons = documented_reasons()
        self.outcomes: dict[str, int] = {}
        self.log_offset = 0
        self.timings: list[float] = []

    def start_example(self) -> None:
        # The reconcile count is the operator's total: no other backend may be left running.
        left = self.backends.custom.list_namespaced_custom_object(GROUP, VERSION, self.backends.namespace, PLURAL)
        assert not left["items"], f"left over by an earlier example: {[o['metadata']['name'] for o in left['items']]}"
        # Each example is judged on its own part of the log.
        self.log_offset = self.operator.log_path.stat().st_size if self.operator.log_path.exists() else 0

    def body(self, name: str, extras: tuple[str, ...], suffix: str) -> dict:
        pg = self.backends.pg
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend", "metadata": {"name": name},
                "spec": full_spec(pg["host"], pg["port"], extras=extras, suffix=suffix, s3_endpoint=self.s3_endpoint)}

    def create(self, body: dict, strict: bool) -> dict:
        kwargs = {"field_validation": "Strict"} if strict else {}
        return self.backends.custom.create_namespaced_custom_object(GROUP, VERSION, self.backends.namespace, PLURAL,
                                                                    body, **kwargs)

    def replace(self, name: str, edits: list[Mutation], strict: bool) -> dict:
        kwargs = {"field_validation": "Strict"} if strict else {}
        for _ in range(10):  # the operator writes finalizers and annotations meanwhile: retry on 409
            current = self.backends.get(name)
            for edit in edits:
                edit.apply(current)
            try:
                return self.backends.custom.replace_namespaced_custom_object(
                    GROUP, VERSION, self.backends.namespace, PLURAL, name, current, **kwargs)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError(f"{name}: conflicts on every replace")

    def count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.last = outcome

    def check_rejection(self, exc: client.ApiException, edits: list[Mutation]) -> None:
        assert exc.status in (400, 403, 422), f"unexpected status {exc.status}: {exc.body}"
        text = _rejection_text(exc)
        assert any(edit.names(text) for edit in edits), \
            f"the refusal does not name the edited field ({[e.candidates() for e in edits]}): {text[:2000]}"
        self.count("refused by the webhook" if "validate.trackop.dev" in text else "refused by the API server")

    def settle(self, name: str, generation: int) -> dict:
        """Wait for the Ready condition of ``generation``; check it is Ready or a documented
        failure; for a failure, check that the operator does not loop on it."""
        def ready_condition():
            obj = self.backends.get(name) or {}
            status = obj.get("status") or {}
            if status.get("observedGeneration", 0) < generation:
                return None
            return next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)

        ready = eventually(ready_condition, f"{name}: a Ready condition for generation {generation}",
                           timeout=SETTLE_TIMEOUT, interval=0.3)
        if ready["status"] == "True":
            self.count("Ready")
            return ready
        assert ready["status"] == "False" and ready["reason"] in self.reasons, \
            f"{name}: Ready {ready['status']} with a reason docs/troubleshooting.md does not list: {ready}"
        self.count(f"Ready=False {ready['reason']}")
        before = _reconciles(self.operator)
        time.sleep(LOOP_WINDOW)
        spent = _reconciles(self.operator) - before
        assert spent <= MAX_RECONCILES_IN_WINDOW, \
            f"{name}: {spent:.0f} reconciles in {LOOP_WINDOW}s on a failing backend ({ready['reason']}): a hot loop"
        return ready

    def check_operator(self, what: str) -> None:
        assert self.operator.process.poll() is None, f"the operator exited after {what}"
        with open(self.operator.log_path, "rb") as file:
            file.seek(self.log_offset)
            log = file.read().decode(errors="replace")
        for block in _traceback_blocks(log):
            # The plain log does not name the object: go by the namespace or the object that the
            # API server's answer names. Another test's namespace may still be terminating.
            namespaces = set(_TEST_NAMESPACE.findall(block)) - {self.backends.namespace}
            objects = {n for n in _API_OBJECT.findall(block) if not n.startswith("bad-")}
            if namespaces or objects:
                continue
            raise AssertionError(f"a traceback in the operator's log after {what}:\n{block[-4000:]}")

    def cleanup(self, name: str) -> None:
        """Delete the backend and what it made: database, role, connection Secret."""
        # The session's secret sweep looks for this example's password too.
        kit.record_secrets(self.backends.core.list_namespaced_secret(self.backends.namespace).items,
                           f"bad input example {name}")
        obj = self.backends.get(name)
        if obj is not None:
            conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
            if conditions.get("DatabaseReady") == "True" and obj["spec"].get("deletionPolicy") != "Delete":
                # Provisioned on the bed's server: let the operator drop what it made.
                self.backends.patch(name, {"spec": {"deletionPolicy": "Delete"}})
            self.backends.delete(name)
            eventually(lambda: self.backends.get(name) is None, f"{name} deleted (its finalizer removed)",
                       timeout=60, interval=0.3)
        try:
            self.backends.core.delete_namespaced_secret(f"{name}-mlflow", self.backends.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        # Whatever is left on the server with trackop's marker for this backend.
        marker = f"managed by trackop for TrackingBackend {self.backends.namespace}/{name}"
        for (database,) in self.superuser.execute(
                "SELECT datname FROM pg_database d JOIN pg_shdescription s ON s.objoid = d.oid "
                "AND s.classoid = 'pg_database'::regclass WHERE s.description = %s", (marker,)).fetchall():
            self.superuser.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for (role,) in self.superuser.execute(
                "SELECT rolname FROM pg_roles r JOIN pg_shdescription s ON s.objoid = r.oid "
                "AND s.classoid = 'pg_authid'::regclass WHERE s.description = %s", (marker,)).fetchall():
            self.superuser.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def bench(backends: Backends, admin: Admin, operator: OperatorProcess, superuser_conn, bed_info: dict) -> Bench:
    backends.admin_secret(admin)
    s3 = bed_info["s3"]
    backends.secret("s3-keys", {"accessKeyId": s3["access_key"], "secretAccessKey": s3["secret_key"]})
    bench = Bench(backends, admin, operator, superuser_conn, bed_info)
    yield bench
    print(f"outcomes: {bench.outcomes}; slowest examples: {sorted(bench.timings)[-5:]}")


@st.composite
def scenarios(draw) -> tuple:
    extras = draw(extras_sets)
    on_update = draw(st.booleans())
    strict = draw(st.booleans())
    if on_update and draw(st.integers(0, 3)) == 0:
        # Immutable fields (CEL oldSelf): a base with database and role set, or without.
        edits = [draw(immutable_changes())]
        if edits[0].value is None:
            extras = tuple(sorted({*extras, "database"}))
    else:
        # Conflicts and unknown fields weigh more: most single-field edits stop at the schema.
        edits = draw(st.lists(st.one_of(mutations(), conflicts(), unknown_fields()), min_size=1, max_size=2))
    if on_update:
        edits = [e for e in edits if e.path != "metadata.name"] or [draw(immutable_changes())]
    return extras, on_update, strict, edits


def _edit(kind: str, path: str, value, *fields: str) -> Mutation:
    return Mutation(kind, path, value, fields)


# Always run, besides the generated ones: one of each way a spec can end.
EXPLICIT = [
    ((), False, False, [_edit("unknown-field", "spec.postgres.extra", 1)]),             # pruned: Ready
    ((), False, True, [_edit("unknown-field", "spec.postgres.extra", 1)]),              # strict: refused
    ((), False, False, [_edit("bad-string", "spec.postgres.role", "current_user")]),    # the webhook's parse
    ((), False, False, [_edit("bad-string", "spec.postgres.external.host", ":::")]),    # the webhook's parse
    (("server",), False, False, [_edit("bad-resources", "spec.server.resources", {"limits": {"cpu": "lots"}})]),
    (("server",), True, False, [_edit("bad-string", "spec.server.serviceAccountName", "Not_A_Name")]),
    ((), False, False, [_edit("bad-string", "spec.schema.image", " image with blanks "),
                        _edit("set", "spec.schema.migration", "Job")]),
    (("s3",), False, False, [_edit("bad-string", "spec.postgres.external.adminSecretRef.name", "missing")]),
]


# No shrinking: each example costs seconds on the bed, and the failing one is reported as
# generated (with the operator's log) which is enough to reproduce it (derandomize).
@settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=False,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(scenario=scenarios())
@example(scenario=EXPLICIT[0])
@example(scenario=EXPLICIT[1])
@example(scenario=EXPLICIT[2])
@example(scenario=EXPLICIT[3])
@example(scenario=EXPLICIT[4])
@example(scenario=EXPLICIT[5])
@example(scenario=EXPLICIT[6])
@example(scenario=EXPLICIT[7])
def test_generated_bad_specs_are_refused_naming_the_field_or_settle(bench: Bench, scenario):
    extras, on_update, strict, edits = scenario
    number = next(_counter)
    name = f"bad-{number}"
    base = bench.body(name, extras, suffix=str(number))
    what = f"example {number}: {'update' if on_update else 'create'} {edits} on a base with {extras}"
    created = name
    bench.start_example()
    started = time.monotonic()
    try:
        if on_update:
            bench.create(copy.deepcopy(base), strict=False)
            try:
                obj = bench.replace(name, edits, strict)
            except client.ApiException as exc:
                bench.check_rejection(exc, edits)
                return
        else:
            body = copy.deepcopy(base)
            for edit in edits:
                edit.apply(body)
            created = body["metadata"]["name"] if isinstance(body.get("metadata"), dict) else name
            try:
                obj = bench.create(body, strict)
            except client.ApiException as exc:
                created = None
                bench.check_rejection(exc, edits)
                return
            created = obj["metadata"]["name"]
        bench.settle(created, obj["metadata"]["generation"])
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from None
    finally:
        try:
            if created:
                bench.cleanup(created)
        finally:
            bench.timings.append(round(time.monotonic() - started, 1))
            print(f"{what} -> {getattr(bench, 'last', '?')} in {bench.timings[-1]}s")
            bench.last = "?"
            bench.check_operator(what)


# ---- a backend stored before an upgrade tightened the rules ---------------------------------

def _crd_without_the_bucket_rules() -> dict:
    """Today's CRD less the rules that refuse ``a..b`` as an S3 bucket: the CRD an older
    release installed."""
    manifest = yaml.safe_load(crd_path().read_text())
    spec_schema = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    bucket = spec_schema["properties"]["artifacts"]["properties"]["s3"]["properties"]["bucket"]
    bucket.pop("x-kubernetes-validations")
    assert re.fullmatch(bucket["pattern"], "a..b"), "the older CRD's pattern takes a..b"
    return manifest


def test_a_backend_stored_before_the_rules_were_tightened_is_reported_and_deleted_under_fail(
        backends: Backends, admin: Admin, operator: OperatorProcess, kube_api):
    """Stored while the CRD had no rule against ``a..b`` and the validating webhook was not
    registered, with the finalizer the operator of the time put on it. After the upgrade
    (today's CRD, the webhook back with failurePolicy Fail) the backend reports InvalidSpec
    naming the field, and is deleted: kopf's annotations and the finalizer's removal are
    updates that leave the spec as it was, which the webhook admits."""
    backends.admin_secret(admin)
    admission = client.AdmissionregistrationV1Api(kube_api)
    name = "stored-bad-bucket"
    spec = {**backends.spec(), "artifacts": {"s3": {"bucket": "a..b"}}, "injection": {"mode": "Direct"}}
    operator.stop()
    try:
        try:
            admission.delete_validating_webhook_configuration(VALIDATING_NAME)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        install_crd(kube_api, manifest=_crd_without_the_bucket_rules())
        backends.custom.create_namespaced_custom_object(GROUP, VERSION, backends.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrackingBackend",
            "metadata": {"name": name, "finalizers": [FINALIZER]}, "spec": spec})
    finally:
        install_crd(kube_api)
        operator.restart(extra_args=["--webhook-failure-policy", "Fail"])
    try:
        (webhook,) = admission.read_validating_webhook_configuration(VALIDATING_NAME).webhooks
        assert webhook.failure_policy == "Fail"
        ready = backends.wait_condition(name, "Ready", "False", "InvalidSpec", timeout=60)
        assert ready["message"].startswith("spec.artifacts.s3.bucket: "), ready
        with pytest.raises(client.ApiException) as refused:
            backends.apply("new-bad-bucket", spec)  # today's rules refuse the same spec anew
        assert "spec.artifacts.s3.bucket" in _rejection_text(refused.value)
        backends.delete(name)
        eventually(lambda: backends.get(name) is None, f"{name} deleted (its finalizer removed)", timeout=60,
                   interval=0.3)
        assert operator.process.poll() is None
    finally:
        operator.restart()  # back to Ignore for the rest of the session
