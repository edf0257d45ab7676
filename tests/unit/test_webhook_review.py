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
