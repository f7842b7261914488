"""The ingress's OpenAPI 3.1 document, generated from the msgspec schemas it validates with.

Nothing is written by hand twice: request and response bodies are the Structs in
``schemas/``, so the document cannot drift from what the ingress accepts. The fuzzing
suite (tests/reliability) draws request bodies from it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.batch import Batch, BatchCreate, BatchList, FileList, FileObject
from schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    Model,
    ModelList,
)
from schemas.completions import CompletionRequest, TextCompletion
from schemas.errors import ErrorResponse
from schemas.messages import AnthropicError, Message, MessagesRequest
from schemas.responses import DeletedResponse, InputItemList, Response, ResponseRequest

REF = "#/components/schemas/"
_TYPES: tuple[Any, ...] = (
    ChatCompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingRequest,
    EmbeddingList,
    Model,
    ModelList,
    ErrorResponse,
    FileObject,
    FileList,
    Batch,
    BatchCreate,
    BatchList,
    ResponseRequest,
    Response,
    DeletedResponse,
    InputItemList,
    MessagesRequest,
    Message,
    AnthropicError,
    CompletionRequest,
    TextCompletion,
)

# status -> when a client sees it (docs/errors.md has the codes)
_ERRORS = {
    "400": "Invalid request body or header (OpenAI error body, `param` names the field)",
    "401": "Missing or unknown API key (auth.required)",
    "403": "The key may not use this model",
    "404": "Unknown model, file or batch (or another tenant's)",
    "409": "The batch already ended: it cannot be cancelled",
    "413": "Request body over ingress.max_body_bytes (the NATS server's max_payload - 64 KiB)",
    "415": "Content-Type is not application/json",
    "429": "Rate limit, budget or quota exceeded (retry-after header)",
    "502": "The upstream provider failed (which one and why in the message)",
    "503": "No worker serves the model, or the queue is full",
    "504": "No answer within the request's deadline",
}


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF + schema_name}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {"description": _ERRORS[status], "content": _json("ErrorResponse")}
        for status in statuses
    }


def _post(summary: str, body: str, reply: dict[str, Any], op: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": op,
            "summary": summary,
            "requestBody": {"required": True, "content": _json(body)},
            "responses": {
                "200": reply,
                **_errors("400", "401", "403", "404", "413", "415", "429", "502", "503", "504"),
            },
        }
    }


def _get(op: str, summary: str, reply: str, *params: str, errors: tuple[str, ...] = ()) -> Any:
    return {
        "operationId": op,
        "summary": summary,
        "parameters": [_path_param(p) for p in params],
        "responses": {
            "200": {"description": summary, "content": _json(reply)},
            **_errors("401", *errors),
        },
    }


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _files_and_batches() -> dict[str, Any]:
    """The OpenAI Files and Batches routes (ingress/routes/files.py and batches.py)."""
    upload = {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "contentMediaType": "application/octet-stream"},
            "purpose": {"type": "string", "enum": ["batch", "batch_output"]},
        },
    }
    deleted = {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "deleted": {"type": "boolean"},
        },
    }
    return {
        "/v1/files": {
            "post": {
                "operationId": "uploadFile",
                "summary": "Upload a JSONL file (Object Store)",
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": upload}},
                },
                "responses": {
                    "200": {"description": "The file", "content": _json("FileObject")},
                    **_errors("400", "401", "413", "415"),
                },
            },
            "get": _get("listFiles", "Stored files", "FileList"),
        },
        "/v1/files/{file_id}": {
            "get": _get("retrieveFile", "One file", "FileObject", "file_id", errors=("404",)),
            "delete": {
                "operationId": "deleteFile",
                "summary": "Delete a file",
                "parameters": [_path_param("file_id")],
                "responses": {
                    "200": {
                        "description": "Deleted",
                        "content": {"application/json": {"schema": deleted}},
                    },
                    **_errors("401", "404"),
                },
            },
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "operationId": "fileContent",
                "summary": "The file's bytes (JSONL)",
                "parameters": [_path_param("file_id")],
                "responses": {
                    "200": {
                        "description": "The content",
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors("401", "404"),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "operationId": "createBatch",
                "summary": "Start a batch over an uploaded file",
                "requestBody": {"required": True, "content": _json("BatchCreate")},
                "responses": {
                    "200": {"description": "The batch", "content": _json("Batch")},
                    **_errors("400", "401", "404", "413", "415"),
                },
            },
            "get": _get("listBatches", "Recent batches", "BatchList"),
        },
        "/v1/batches/{batch_id}": {
            "get": _get("retrieveBatch", "One batch", "Batch", "batch_id", errors=("404",)),
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "summary": "Cancel a batch",
                "parameters": [_path_param("batch_id")],
                "responses": {
                    "200": {"description": "The batch", "content": _json("Batch")},
                    **_errors("401", "404", "409"),
                },
            }
        },
    }


def _responses() -> dict[str, Any]:
    """The Responses API routes (ingress/routes/responses.py)."""
    created = {
        "description": (
            "The response; with `stream: true`, server-sent events whose `type` is "
            "response.created, response.output_text.delta, ..., response.completed"
        ),
        "content": {**_json("Response"), "text/event-stream": {"schema": {"type": "object"}}},
    }
    deleted = {"description": "Deleted", "content": _json("DeletedResponse")}
    return {
        "/v1/responses": _post("Create a response", "ResponseRequest", created, "createResponse"),
        "/v1/responses/{response_id}": {
            "get": _get(
                "retrieveResponse", "A stored response", "Response", "response_id", errors=("404",)
            ),
            "delete": {
                "operationId": "deleteResponse",
                "summary": "Delete a stored response",
                "parameters": [_path_param("response_id")],
                "responses": {"200": deleted, **_errors("401", "404")},
            },
        },
        "/v1/responses/{response_id}/input_items": {
            "get": {
                **_get(
                    "listInputItems",
                    "A stored response's input items",
                    "InputItemList",
                    "response_id",
                    errors=("400", "404"),
                ),
                "parameters": [
                    _path_param("response_id"),
                    _query_param("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                    _query_param("order", {"type": "string", "enum": ["asc", "desc"]}),
                    _query_param("after", {"type": "string"}),
                ],
            }
        },
    }


def _messages() -> dict[str, Any]:
    """Anthropic's Messages API (ingress/routes/messages.py): errors in Anthropic's shape."""
    statuses = ("400", "401", "403", "404", "413", "415", "429", "502", "503", "504")
    errors = {
        status: {"description": _ERRORS[status], "content": _json("AnthropicError")}
        for status in statuses
    }
    created = {
        "description": (
            "The message; with `stream: true`, server-sent events: message_start, "
            "content_block_start/delta/stop, message_delta, message_stop"
        ),
        "content": {**_json("Message"), "text/event-stream": {"schema": {"type": "object"}}},
    }
    return {
        "/v1/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "Create a message (Anthropic's Messages API; key as x-api-key)",
                "requestBody": {"required": True, "content": _json("MessagesRequest")},
                "responses": {"200": created, **errors},
            }
        }
    }


def openapi_document(title: str = "promptbus ingress", version: str = "0.1.0") -> dict[str, Any]:
    """The whole document as a dict (encode it once; it does not change at run time)."""
    _, components = msgspec.json.schema_components(_TYPES, ref_template=REF + "{name}")
    completion = {
        "description": "The completion; with `stream: true`, server-sent events of chunks",
        "content": {
            **_json("ChatCompletion"),
            "text/event-stream": {"schema": {"$ref": REF + "ChatCompletionChunk"}},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "OpenAI-compatible API; requests are queued on NATS JetStream. Any route "
                "may also answer 405 (another method; `Allow` lists the methods), 408 (the "
                "request headers took longer than ingress.header_timeout_s) and 503 "
                "too_many_connections (past ingress.max_connections)."
            ),
        },
        "paths": {
            "/v1/chat/completions": _post(
                "Create a chat completion", "ChatCompletionRequest", completion, "createChat"
            ),
            "/v1/completions": _post(
                "Create a legacy text completion (OpenAI-compatible upstreams)",
                "CompletionRequest",
                {
                    "description": "The completion; with `stream: true`, server-sent events",
                    "content": {
                        **_json("TextCompletion"),
                        "text/event-stream": {"schema": {"$ref": REF + "TextCompletion"}},
                    },
                },
                "createCompletion",
            ),
            "/v1/embeddings": _post(
                "Create embeddings",
                "EmbeddingRequest",
                {"description": "The embeddings", "content": _json("EmbeddingList")},
                "createEmbeddings",
            ),
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "Models this key may use",
                    "responses": {
                        "200": {"description": "The models", "content": _json("ModelList")},
                        **_errors("401"),
                    },
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "operationId": "retrieveModel",
                    "summary": "One model",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The model", "content": _json("Model")},
                        **_errors("401", "404"),
                    },
                }
            },
            **_responses(),
            **_messages(),
            **_files_and_batches(),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }


def openapi_json() -> bytes:
    return msgspec.json.encode(openapi_document())
