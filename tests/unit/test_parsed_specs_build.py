"""Property: a spec that ``parse`` accepts builds every object trackop makes of it, without
raising, and each object is one the API server and the stores' clients take; a spec that
``parse`` refuses is refused for one of its near-miss fields, by name (a valid value is
never refused).

Every object: the connection Secret (data, keys), the tracking server's Deployment and
Service, the migration Job, the managed server's objects, the SQL plans, the injection
index entry, the Secret copies and a pod's patch, the webhook's own verdict, the
artifact location with its client env and the store clients themselves, and the
webhook configurations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from hypothesis import HealthCheck, event, given, settings
from kubernetes.utils import parse_quantity
from spec_values import names_the_near_miss, specs

from trackop.api import connections, v1alpha1
from trackop.api.parsing import parse
from trackop.api.v1alpha1 import BackendSpec, SpecError
from trackop.artifacts import locations
from trackop.artifacts.common import shown_endpoint
from trackop.controller import fingerprint
from trackop.controller.handlers import index_view
from trackop.postgres import plans, templates
from trackop.specs import connection_secret, managed_server, managed_server_status, migration_job, tracking_server
from trackop.specs.webhook_configurations import webhook_configurations
from trackop.webhook import injection
from trackop.webhook.index import Index
from trackop.webhook.validation import validate_backend

SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

OWNER = {"apiVersion": f"{v1alpha1.GROUP}/{v1alpha1.VERSION}", "kind": v1alpha1.KIND,
         "metadata": {"name": "x", "uid": "00000000-0000-0000-0000-000000000001"}}
PASSWORD = "p@ss:w/rd?#%"
_S3 = boto3.session.Session()

# What the API server requires of the objects' names, labels and references.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _subdomain(name: object) -> bool:
    return isinstance(name, str) and len(name) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(name))


def _key(key: object) -> bool:
    return isinstance(key, str) and len(key) <= 253 and bool(_SECRET_KEY.fullmatch(key)) and not key.startswith("..") \
        and key != "."


def _check_metadata(body: Mapping[str, Any], *, label_name: bool = False) -> None:
    meta = body["metadata"]
    name = meta["name"]
    assert _subdomain(name), name
    if label_name:  # Services, and Jobs (whose name becomes their pods' job-name label)
        assert len(name) <= 63 and _DNS_LABEL.fullmatch(name), name
    for key, value in (meta.get("labels") or {}).items():
        assert _QUALIFIED.fullmatch(key) and len(key.rpartition("/")[2]) <= 63, key
        assert isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.fullmatch(value), (key, value)


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from pod_spec.get("initContainers") or []
    yield from pod_spec["containers"]


def _check_resources(resources: Mapping[str, Any]) -> None:
    assert set(resources) <= {"limits", "requests"}, resources
    amounts = {kind: {name: parse_quantity(value) for name, value in (resources.get(kind) or {}).items()}
               for kind in ("limits", "requests")}
    for kind in amounts.values():
        assert all(amount >= 0 for amount in kind.values()), resources
    for name, amount in amounts["requests"].items():
        limit = amounts["limits"].get(name)
        if "/" in name or name.startswith("hugepages-"):
            assert limit == amount, resources
        elif limit is not None:
            assert amount <= limit, resources


def _check_pod_spec(pod_spec: Mapping[str, Any]) -> None:
    if "serviceAccountName" in pod_spec:
        assert _subdomain(pod_spec["serviceAccountName"]), pod_spec["serviceAccountName"]
    for volume in pod_spec.get("volumes") or []:
        if "secret" in volume:
            assert _subdomain(volume["secret"]["secretName"])
            assert all(_key(item["key"]) for item in volume["secret"].get("items") or [])
    for container in _containers(pod_spec):
        image = container["image"]
        assert image and not re.search(r"\s", image), image  # the API server refuses blanks around it
        for env in container.get("env") or []:
            assert _ENV_NAME.fullmatch(env["name"]), env["name"]
            if "value" in env:
                assert isinstance(env["value"], str), env
            else:
                ref = env["valueFrom"]["secretKeyRef"]
                assert _subdomain(ref["name"]) and _key(ref["key"]), ref
        _check_resources(container.get("resources") or {})


def _check_store_clients(store: v1alpha1.ArtifactStore, location: locations.Location) -> None:
    """The clients the artifact checks build take the location (built offline: no request)."""
    if isinstance(location, locations.S3Location):
        _S3.client("s3", endpoint_url=location.endpoint, region_name=location.region,
                   aws_access_key_id="AKIA", aws_secret_access_key="secret")
    elif isinstance(location, locations.GCSLocation):
        options = {"api_endpoint": location.endpoint} if location.endpoint else None
        storage.Client(project=location.project or "p", credentials=AnonymousCredentials(), client_options=options)
    else:
        BlobServiceClient(location.account_url, credential=AzureNamedKeyCredential(location.account, "a2V5"))
        BlobServiceClient.from_connection_string(locations.azure_connection_string(location, "a2V5"))
    if location.endpoint:
        assert shown_endpoint(location.endpoint)


def build_everything(spec: BackendSpec, body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every object and plan trackop makes of ``spec``, checked; the Kubernetes objects."""
    store = spec.artifacts
    bucket_secret = ("-",) * len(store.credential_keys) if store and store.credentials_secret else None
    keys = tuple(sorted(connection_secret.placeholder_data(spec)))
    data = connection_secret.connection_secret_data(spec, PASSWORD, bucket_secret)
    assert tuple(sorted(data)) == keys and all(_ENV_NAME.fullmatch(k) and _key(k) for k in keys)
    objects = [connection_secret.connection_secret(spec, PASSWORD, OWNER, bucket_secret),
               migration_job.migration_job(spec, OWNER)]
    connection_secret.operator_uri(spec.postgres, "admin", PASSWORD, spec.database)
    if spec.tracking_server is not None:
        objects += [tracking_server.deployment(spec, OWNER), tracking_server.service(spec, OWNER)]
    if spec.managed is not None:
        settings_ = managed_server.parameters(spec)
        managed_server_status.budget_shortfall(spec, settings_)
        objects += [managed_server.superuser_secret(spec, PASSWORD, OWNER), managed_server.service(spec, OWNER)]
        if spec.managed.engine == v1alpha1.ENGINE_STATEFULSET:
            statefulset = managed_server.statefulset(spec, OWNER, settings_)
            objects.append(statefulset)
            managed_server_status.statefulset_progress(spec, statefulset)
            assert _subdomain(managed_server.claim_name(spec)) and managed_server.pod_name(spec)
        else:
            cluster = managed_server.cnpg_cluster(spec, OWNER, settings_)
            objects.append(cluster)
            managed_server_status.cluster_progress(spec, cluster)
            _check_resources(cluster["spec"].get("resources") or {})
            assert managed_server.primary_pod_selector(spec)
    tuning = spec.effective_tuning
    connections.connection_budget(tuning, 1, 2, database_limit=-1, role_limit=-1, server_max_connections=100,
                                  reserved_slots=3, used_by_others=0)
    plans.plan_database(spec, None, None)
    templates.plan_clone(spec, "mlflow_template")
    fingerprint.referenced_secrets(spec)
    fingerprint.owned_objects(spec)

    # Injection: the index entry, the copies, a pod's patch, and the webhook's verdict.
    view = injection.backend_view(spec, connection_secret.placeholder_data(spec))
    index = Index()
    index.set_backend(view, (spec.postgres.host, spec.postgres.port, spec.database))
    assert validate_backend(body, index) == (True, "")
    copy = injection.copy_secret_data(view, data)
    expected = set(injection.expected_env_names(view))
    # A copy holds the secrets a pod is injected with; the rest are plain values in the view.
    assert set(copy) == {key for key in expected if injection.is_secret(spec.injection_mode, key)}
    assert expected - set(copy) <= {key for key, _ in view.plain_values}
    assert _subdomain(injection.copy_secret_name(spec.namespace, spec.name))
    for namespace, labels in (("other", {"team": "a", "env": "dev"}), ("kube-system", {}), (spec.namespace, {})):
        injection.admits_namespace(spec.namespace, spec.namespace_selector, namespace, labels, "trackop")
    pod = {"metadata": {"name": "p", "labels": {v1alpha1.INJECT_LABEL: "true"},
                        "annotations": {v1alpha1.BACKEND_ANNOTATION: view.reference}},
           "spec": {"containers": [{"name": "c", "image": "python:3.11-slim"}]}}
    assert injection.mutate(pod, "other", view, {"team": "a"}, operator_namespace="trackop", fail_closed=True)

    if store is not None:
        location = locations.location_for(store)
        assert location.uri == store.uri
        if isinstance(location, locations.S3Location):
            locations.s3_client_env(location)
        elif isinstance(location, locations.GCSLocation):
            locations.gcs_client_env(location, credentials_file="/k.json")
        else:
            locations.azure_client_env(location)
        _check_store_clients(store, location)
    webhook_configurations("https://127.0.0.1:8443", b"ca", failure_policy="Fail", operator_namespace="trackop")

    for obj in objects:
        json.dumps(obj, allow_nan=False)  # what the Kubernetes client sends
        _check_metadata(obj, label_name=obj["kind"] in ("Service", "Job"))
        template = (obj.get("spec") or {}).get("template")
        if template is not None:
            _check_metadata({"metadata": {"name": "pod", **template["metadata"]}})
            _check_pod_spec(template["spec"])
    return objects


@SETTINGS
@given(drawn=specs())
def test_a_spec_that_parses_builds_every_object_and_a_refused_one_names_a_near_miss(drawn):
    obj, near = drawn
    meta = obj["metadata"]
    try:
        spec = parse(meta["namespace"], meta["name"], obj["spec"])
    except SpecError as error:
        assert near, f"a spec of valid values only was refused: {error}"
        assert names_the_near_miss(error.field, near), (error.field, near, str(error))
        assert index_view(obj) is None  # the index (and the operator's startup) leaves it out
        event("refused")
        return
    event(f"parsed{' with a near miss' if near else ''}")
    build_everything(spec, obj)
    assert index_view(obj) is not None


def test_the_issue_s_buckets_are_refused_by_parse_naming_the_field():
    for bucket in ("a..b", "xn--abc", "192.168.1.1"):
        spec = {"postgres": {"external": {"host": "pg", "adminSecretRef": {"name": "a"}}},
                "artifacts": {"s3": {"bucket": bucket}}, "injection": {"mode": "Direct"}}
        try:
            parse("ns", "team-a", spec)
        except SpecError as error:
            assert error.field == "spec.artifacts.s3.bucket" and str(error).startswith("spec.artifacts.s3.bucket: ")
        else:
            raise AssertionError(f"{bucket!r} parsed")
