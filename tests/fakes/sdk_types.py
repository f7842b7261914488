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


def anthropic_request_problem(body: Any) -> str | None:
    """Why the anthropic SDK's ``messages.create`` params would not take ``body``."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    try:
        _anthropic_params(bool(body.get("stream"))).validate_python(body)
    except pydantic.ValidationError as exc:
        return f"not a MessageCreateParams: {exc}"
    return None


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
