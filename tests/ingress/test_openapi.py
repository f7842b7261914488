"""GET /openapi.json: an OpenAPI 3.1 document generated from the msgspec schemas."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from ingress.app import create_app
from ingress.openapi import openapi_document
from schemas.chat import ChatCompletionRequest, EmbeddingRequest
from schemas.completions import CompletionRequest
from schemas.config import Config


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_document_structure(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):  # every reference resolves inside the document
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert operation["operationId"], (path, method)
            responses = operation["responses"]
            assert "200" in responses
            for status, answer in responses.items():
                if status.startswith(("4", "5")):  # the OpenAI error body, or Anthropic's
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    shape = "AnthropicError" if path == "/v1/messages" else "ErrorResponse"
                    assert ref == f"#/components/schemas/{shape}", (path, status)
    assert schemas["ErrorResponse"]["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"message", "type"}


def test_every_public_route_is_documented() -> None:
    """The API routes of the real app (admin and probes aside) are all in the document."""
    app = create_app(msgspec.convert({"model_list": []}, Config))
    paths = openapi_document()["paths"]
    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/v1/"):
            continue
        documented = path.replace("{model:path}", "{model}")
        assert documented in paths, path
        for method in getattr(route, "methods", set()) - {"HEAD"}:
            assert method.lower() in paths[documented], (path, method)


def test_request_schemas_match_the_validators() -> None:
    """The document's request schemas are the ones msgspec validates with: a body the
    schema requires fields of is refused by the decoder without them, and vice versa."""
    schemas = openapi_document()["components"]["schemas"]
    for struct in (ChatCompletionRequest, EmbeddingRequest, CompletionRequest):
        schema = schemas[struct.__name__]
        required = [
            f for f, r in zip(struct.__struct_fields__, _required(struct), strict=True) if r
        ]
        assert set(schema["required"]) == set(required)
        assert set(schema["properties"]) == set(struct.__struct_fields__)


def _required(struct: Any) -> list[bool]:
    """True for each field without a default (a required one)."""
    n_required = len(struct.__struct_fields__) - len(struct.__struct_defaults__)
    return [i < n_required for i in range(len(struct.__struct_fields__))]
