"""trackop.webhook.server.review_response: AdmissionReview responses (pure)."""

from __future__ import annotations

import base64
import json

from trackop.webhook.server import review_response


def test_review_response_encodes_patch_and_rejection():
    allowed = review_response("u1", True, patch=[{"op": "add", "path": "/x", "value": 1}], warnings=["w"])
    response = allowed["response"]
    assert response["uid"] == "u1" and response["patchType"] == "JSONPatch" and response["warnings"] == ["w"]
    assert json.loads(base64.b64decode(response["patch"])) == [{"op": "add", "path": "/x", "value": 1}]
    denied = review_response("u2", False, message="no")["response"]
    assert denied["allowed"] is False and denied["status"] == {"code": 403, "message": "no"}


def test_the_handlers_answer_validation_reviews_by_the_spec_change():
    from trackop.webhook.index import Index
    from trackop.webhook.server import Handlers

    handlers = Handlers(Index(), operator_namespace="trackop", fail_closed=True)
    stored = {"metadata": {"name": "a", "namespace": "ns", "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"]},
              "spec": {"postgres": {"external": {"host": "pg", "adminSecretRef": {"name": "admin"}}},
                       "artifacts": {"s3": {"bucket": "a..b"}}}}
    released = {**stored, "metadata": {**stored["metadata"], "finalizers": []}}
    update = handlers.validate({"uid": "u", "operation": "UPDATE", "object": released, "oldObject": stored})
    assert update["response"] == {"uid": "u", "allowed": True}
    create = handlers.validate({"uid": "c", "operation": "CREATE", "object": stored})["response"]
    assert create["allowed"] is False and create["status"]["message"].startswith("spec.artifacts.s3.bucket: ")
