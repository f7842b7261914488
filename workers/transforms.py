"""Transformations: named edits of requests and responses, from the config's ``transforms``.

A model alias lists profile names (``ModelConfig.transforms``); the worker compiles them
once into a ``Transforms`` and applies it to every request before the provider call and
to every response or chunk after it. Per-key profiles will be appended to the list.

Order, per profile and profiles in list order:

1. ``strip``: remove the named request fields;
2. ``defaults``: fill in fields the caller left out;
3. ``set``: force fields to a value, whatever the caller sent;
4. ``cap``: lower numeric fields above the limit to the limit (absent ones stay absent);
5. ``system_prompt``: ``prepend`` it before the caller's system messages, ``append`` it
   after them, or ``replace`` them all (system and developer messages) with it;
6. ``metadata``: merge into the request's ``metadata``.

On the way back: ``response_model`` replaces ``model`` in the response and in every chunk,
``response_deployment`` the deployment named to callers (the last profile setting either
wins). Values are validated at config load (``schemas.chat.check_transform_fields``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from schemas.chat import (
    ChatCompletionRequest,
    DeveloperMessage,
    Message,
    SystemMessage,
)
from schemas.config import TransformConfig


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Config values as the request's own types (e.g. a tool_choice dict, a Struct)."""
    if not values:
        return {}
    probe = msgspec.convert(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]} | values,
        ChatCompletionRequest,
    )
    return {name: getattr(probe, name) for name in values}


class _Profile:
    def __init__(self, config: TransformConfig) -> None:
        self.strip = dict.fromkeys(config.strip)  # field -> None
        self.defaults = _typed(config.defaults)
        self.set = _typed(config.set)
        self.cap = config.cap
        self.system_prompt = config.system_prompt
        self.system_mode = config.system_prompt_mode
        self.metadata = config.metadata

    def apply(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        changes: dict[str, Any] = dict(self.strip)
        for name, value in self.defaults.items():
            if changes.get(name, getattr(request, name)) is None:
                changes[name] = value
        changes.update(self.set)
        for name, limit in self.cap.items():
            value = changes.get(name, getattr(request, name))
            if value is not None and value > limit:
                changes[name] = int(limit) if isinstance(value, int) else limit
        if self.system_prompt is not None:
            changes["messages"] = self._with_system(request.messages)
        if self.metadata:
            changes["metadata"] = (request.metadata or {}) | self.metadata
        return msgspec.structs.replace(request, **changes) if changes else request

    def _with_system(self, messages: list[Message]) -> list[Message]:
        assert self.system_prompt is not None
        ours = SystemMessage(content=self.system_prompt)
        if self.system_mode == "prepend":
            return [ours, *messages]
        if self.system_mode == "replace":
            rest = [m for m in messages if not isinstance(m, SystemMessage | DeveloperMessage)]
            return [ours, *rest]
        leading = 0  # append: after the caller's leading system messages
        while leading < len(messages) and isinstance(
            messages[leading], SystemMessage | DeveloperMessage
        ):
            leading += 1
        return [*messages[:leading], ours, *messages[leading:]]


class Transforms:
    """The compiled profiles of one model (plus, later, of one key), in order."""

    def __init__(self, profiles: list[TransformConfig]) -> None:
        self._profiles = [_Profile(p) for p in profiles]
        self.response_model: str | None = None
        self.response_deployment: str | None = None
        for profile in profiles:
            self.response_model = profile.response_model or self.response_model
            self.response_deployment = profile.response_deployment or self.response_deployment

    @classmethod
    def build(cls, profiles: Mapping[str, TransformConfig], names: list[str]) -> Transforms | None:
        """The named profiles compiled in list order; None when there are none, so the
        hot path pays nothing. Unknown names were refused at config load."""
        if not names:
            return None
        return cls([profiles[name] for name in names])

    def request(self, request: ChatCompletionRequest) -> ChatCompletionRequest:
        for profile in self._profiles:
            request = profile.apply(request)
        return request

    def response(self, body: bytes) -> bytes:
        """A ``chat.completion`` or chunk body with the reported model renamed."""
        if self.response_model is None:
            return body
        value = msgspec.json.decode(body)
        if isinstance(value, dict) and "model" in value:
            value["model"] = self.response_model
            return msgspec.json.encode(value)
        return body
