"""OpenAI legacy text completions (``POST /v1/completions``): the request and the
``text_completion`` answer, streamed or not.

Served only by deployments whose upstream has the API (OpenAI-compatible ones: vLLM,
Ollama, OpenAI's own instruct models; ``TEXT_COMPLETION_PROVIDERS``); the native
adapters refuse it with a 400. Like chat, fields promptbus does not define are kept and
forwarded to the upstream (vLLM's ``top_k``, ``min_p`` ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.chat import (
    FieldKeepingDecoder,
    Int64,
    NonEmptyStr,
    Penalty,
    StreamOptions,
    Temperature,
    TopP,
    UnknownFields,
    Usage,
)
from schemas.config import ModelConfig
from schemas.depth import checked
from schemas.errors import invalid_request

TEXT_COMPLETION_PROVIDERS = frozenset({"openai", "azure", "mock"})


def speaks_text_completions(model: ModelConfig) -> bool:
    """Can some deployment of ``model`` answer a legacy completions request?"""
    return any(d.provider in TEXT_COMPLETION_PROVIDERS for d in model.deployments)


TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
# OpenAI's prompt is a string, strings, token ids or lists of token ids. msgspec takes one
# array type per union, so the lists are decoded as one and ``prompt_error`` says which
# mixes are refused.
Prompt = str | list[str | TokenId | list[TokenId]]


class CompletionRequest(Struct, omit_defaults=True):
    """POST /v1/completions body, with OpenAI's documented ranges enforced."""

    model: NonEmptyStr
    prompt: Prompt
    best_of: Annotated[int, Meta(ge=0, le=20)] | None = None
    echo: bool | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    max_tokens: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    seed: Int64 | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None

    def prompt_error(self) -> str | None:
        """Why the prompt is not one of OpenAI's four shapes, or None."""
        prompt = self.prompt
        if isinstance(prompt, str) or not prompt:
            return None
        kinds = {type(p) for p in prompt}
        if len(kinds) > 1:
            return "a list prompt holds strings, token ids or token id lists, not a mix"
        return None

    def prompts(self) -> list[str]:
        """The prompt as texts (token-id prompts as their ids, space separated)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            return [""]
        if isinstance(prompt[0], int):
            return [" ".join(str(t) for t in prompt)]
        return [p if isinstance(p, str) else " ".join(str(t) for t in p) for p in prompt]  # type: ignore[union-attr]


class _ExactCompletionRequest(CompletionRequest, forbid_unknown_fields=True):
    """The same request, refusing fields it does not define (the fast path)."""


class TextChoice(Struct):
    text: str
    index: int
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class TextCompletion(Struct):
    """A ``text_completion``: the whole answer, or one chunk of a stream (the usage
    chunk of a stream has no choices)."""

    id: str
    choices: list[TextChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: Usage | None = None


request_fields = FieldKeepingDecoder(CompletionRequest, _ExactCompletionRequest)


def decode_completion_request(body: bytes) -> tuple[CompletionRequest, UnknownFields]:
    """A caller's request and its unknown top-level fields; every failure a 400 naming
    its param (the depth limit first, as for chat)."""
    request, unknown = checked(request_fields.decode, body)
    problem = request.prompt_error()
    if problem is not None:
        raise invalid_request(f"`prompt`: {problem}.", param="prompt")
    return request, unknown


text_completion_decoder = msgspec.json.Decoder(TextCompletion)
