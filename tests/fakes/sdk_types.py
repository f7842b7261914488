"""The official SDKs' published types as the fakes' referee: every request a fake gets
is checked against the SDK's request params, and every answer a fake makes up is parsed
with the SDK's response types, so a wrong field name fails a test here instead of a
user's first real call (issue 17). The fakes' own strict schemas stay in front: the SDKs'
TypedDicts do not refuse unknown keys."""

from __future__ import annotations

from functools import cache
from typing import Any

import pydantic
from pydantic import TypeAdapter


@cache
def _anthropic_params(stream: bool) -> TypeAdapter[Any]:
    from anthropic.types import message_create_params as params

    kind = params.MessageCreateParamsStreaming if stream else params.MessageCreateParamsNonStreaming
    return TypeAdapter(kind)


@cache
def _anthropic_event() -> TypeAdapter[Any]:
    from anthropic.types import RawMessageStreamEvent

    return TypeAdapter(RawMessageStreamEvent)


def _params_problem(params: Any, body: Any, what: str) -> str | None:
    """Why ``params`` (``(stream) -> TypeAdapter``) would not take ``body``."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    try:
        params(bool(body.get("stream"))).validate_python(body)
    except pydantic.ValidationError as exc:
        return f"not a {what}: {str(exc)[:2000]}"
    return None


def anthropic_request_problem(body: Any) -> str | None:
    """Why the anthropic SDK's ``messages.create`` params would not take ``body``."""
    return _params_problem(_anthropic_params, body, "MessageCreateParams")


def anthropic_answer(message: dict[str, Any]) -> dict[str, Any]:
    """``message``, once the anthropic SDK has parsed it as a ``Message`` (raises if not)."""
    from anthropic.types import Message

    Message.model_validate(message)
    return message


def anthropic_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events``, once each parses as the SDK's ``RawMessageStreamEvent`` (``ping``s,
    which the SDK skips before parsing, aside)."""
    for event in events:
        if event.get("type") != "ping":
            _anthropic_event().validate_python(event)
    return events


# Gemini's REST body, field by field, as the google-genai SDK types it (camelCase
# aliases; its models refuse unknown fields).
_GEMINI_FIELDS = {
    "contents": ("Content", True),
    "systemInstruction": ("Content", False),
    "generationConfig": ("GenerationConfig", False),
    "tools": ("Tool", True),
    "toolConfig": ("ToolConfig", False),
    "safetySettings": ("SafetySetting", True),
    "cachedContent": (None, False),
}


def gemini_request_problem(body: Any) -> str | None:
    """Why google-genai's types would not take a ``generateContent`` body."""
    from google.genai import types

    if not isinstance(body, dict):
        return "the body is not a JSON object"
    for name, value in body.items():
        if name not in _GEMINI_FIELDS:
            return f"unknown field {name!r}"
        kind, many = _GEMINI_FIELDS[name]
        if kind is None:
            continue
        model = getattr(types, kind)
        try:
            for item in value if many else [value]:
                model.model_validate(item)
        except (pydantic.ValidationError, TypeError) as exc:
            return f"{name} is not google-genai's {kind}: {exc}"
    return None


def gemini_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """``answer``, once google-genai has parsed it as a ``GenerateContentResponse``."""
    from google.genai import types

    types.GenerateContentResponse.model_validate(answer)
    return answer


def gemini_embeddings(answer: dict[str, Any]) -> dict[str, Any]:
    """``answer``, once google-genai has parsed it as an ``EmbedContentResponse``."""
    from google.genai import types

    types.EmbedContentResponse.model_validate(answer)
    return answer


@cache
def _openai_responses_params(stream: bool) -> TypeAdapter[Any]:
    from openai.types.responses import response_create_params as params

    kind = (
        params.ResponseCreateParamsStreaming if stream else params.ResponseCreateParamsNonStreaming
    )
    return TypeAdapter(kind)


def openai_responses_request_problem(body: Any) -> str | None:
    """Why the openai SDK's ``responses.create`` params would not take ``body`` (what a
    native upstream, OpenAI's own, is sent)."""
    return _params_problem(_openai_responses_params, body, "ResponseCreateParams")
