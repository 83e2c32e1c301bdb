"""The API's OpenAPI document types every answer, errors carry stable codes, and the CLI's
client tells errors apart by those codes (in-process app, FastAPI's TestClient)."""

from __future__ import annotations

import httpx
import pytest
from tests_fleet_util import h

from edgefleet.errors import BadInputError, ConflictError, InvalidTransitionError, NotFoundError, PermissionDeniedError
from edgefleet.fleet.client import error_from


def typed(content: dict) -> bool:
    """A JSON answer is a named model, a list of one, or a list of models told apart by a
    discriminator; a file download is declared binary under its media type."""
    if "application/json" not in content:
        return [body.get("schema") for body in content.values()] == [{"type": "string", "format": "binary"}]
    schema = content["application/json"]["schema"]
    item = schema.get("items", {}) if schema.get("type") == "array" else schema
    refs = [item] if "$ref" in item else item.get("oneOf", [])
    return bool(refs) and all("$ref" in r for r in refs) and (len(refs) == 1 or "discriminator" in item)


def test_every_operation_documents_a_typed_answer_and_the_error_body(api):
    doc = api.get("/openapi.json").json()
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 24 and "/api/v1/drift/events" in doc["paths"]
    for path, method, op in operations:
        ok = next(body for status, body in op["responses"].items() if status.startswith("2"))
        assert typed(ok["content"]), f"{method} {path} answers an untyped {ok['content']}"
        assert op["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    create = doc["paths"]["/api/v1/rollouts"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert doc["components"]["schemas"][create.rsplit("/", 1)[1]]["properties"]["plan"]["$ref"].endswith("/RolloutPlan")


@pytest.mark.parametrize(
    "content, ok",
    [
        ({"application/json": {"schema": {"$ref": "#/components/schemas/X"}}}, True),
        ({"application/json": {"schema": {"type": "array", "items": {"$ref": "#/c/X"}}}}, True),
        ({"application/json": {"schema": {"type": "object"}}}, False),  # a free dict
        ({"application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}, False),
        (
            {
                "application/json": {
                    "schema": {"type": "array", "items": {"oneOf": [{"$ref": "#/c/A"}, {"$ref": "#/c/B"}]}}
                }
            },
            False,
        ),
        (
            {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "items": {
                            "oneOf": [{"$ref": "#/c/A"}, {"$ref": "#/c/B"}],
                            "discriminator": {"propertyName": "k"},
                        },
                    }
                }
            },
            True,
        ),
        ({"application/gzip": {"schema": {"type": "string", "format": "binary"}}}, True),
        ({"application/gzip": {}}, False),
    ],
)
def test_the_typed_check_tells_free_answers_from_models(content, ok):
    assert typed(content) is ok


@pytest.mark.parametrize(
    "method, path, kwargs, scope, status, code",
    [
        ("get", "/api/v1/models", {}, None, 401, "unauthorized"),
        ("post", "/api/v1/tokens", {"json": {"name": "x", "scope": "admin"}}, "operator", 403, "permission_denied"),
        ("get", "/api/v1/rollouts/7", {}, "read-only", 404, "not_found"),
        ("post", "/api/v1/rollouts", {"json": {"group": "tiny"}}, "operator", 422, "validation_error"),
        (
            "post",
            "/api/v1/rollouts",
            {"json": {"group": "tiny", "version": "1", "plan": {"waves": [10]}}},
            "operator",
            400,
            "bad_input",
        ),
        (
            "post",
            "/api/v1/models/tiny/versions/1/approval",
            {"json": {"state": "Sideways"}},
            "admin",
            409,
            "invalid_transition",
        ),
    ],
)
def test_errors_carry_a_stable_code(api, method, path, kwargs, scope, status, code):
    r = getattr(api, method)(path, headers=h(api, scope) if scope else {}, **kwargs)
    assert (r.status_code, r.json()["code"]) == (status, code), r.json()
    assert r.json()["error"] and "fix" in r.json()


def answer(status: int, body: dict | None = None, text: str = "") -> httpx.Response:
    return httpx.Response(status, json=body) if body is not None else httpx.Response(status, text=text)


@pytest.mark.parametrize(
    "response, cls",
    [
        # The code decides, whatever the words say: a conflict that reads like a transition stays a conflict.
        (
            answer(409, {"error": "rollout 3 is paused; 'pause' is not allowed there", "fix": "", "code": "conflict"}),
            ConflictError,
        ),
        (answer(409, {"error": "no words to match", "fix": "", "code": "invalid_transition"}), InvalidTransitionError),
        (answer(401, {"error": "x", "fix": "", "code": "unauthorized"}), PermissionDeniedError),
        (answer(404, {"error": "x", "fix": "", "code": "not_found"}), NotFoundError),
        (answer(413, {"error": "x", "fix": "y", "code": "payload_too_large"}), BadInputError),
        (answer(422, text="not JSON from a proxy"), BadInputError),  # no code: by status
    ],
)
def test_the_client_tells_errors_apart_by_code(response, cls):
    err = error_from(response)
    assert type(err) is cls
