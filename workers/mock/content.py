"""Deterministic fake completions, shared by the in-process mock provider and mock-upstream.

The answer echoes the last user text, so tests can check that the right request arrived;
token counts are word counts, so usage is predictable. A request that makes a tool call
mandatory (``tool_choice: required`` or a named function) gets a call of that tool with
``{"text": <the last user text>}``; a turn ending in a tool's output is answered with it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time

from schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    FunctionTool,
    ResponseMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolMessage,
    Usage,
    UserMessage,
)
from schemas.completions import CompletionRequest, TextChoice, TextCompletion

_ID_PREFIX = f"chatcmpl-{os.urandom(6).hex()}"
_ids = itertools.count()


def _completion_id() -> str:
    """Unique per process and cheap: a random process prefix and a counter."""
    return f"{_ID_PREFIX}{next(_ids):012x}"


def last_user_text(request: ChatCompletionRequest) -> str:
    for message in reversed(request.messages):
        if isinstance(message, UserMessage):
            if isinstance(message.content, str):
                return message.content
            return " ".join(p.text for p in message.content if isinstance(p, TextPart))
    return ""


def tool_call(request: ChatCompletionRequest) -> ToolCall | None:
    """The call a request makes mandatory, if any (see the module docstring)."""
    choice = request.tool_choice
    tools = [t for t in request.tools or [] if isinstance(t, FunctionTool)]
    if not tools or not (choice == "required" or isinstance(choice, dict)):
        return None
    if isinstance(request.messages[-1], ToolMessage):
        return None  # the tool answered: now the model speaks
    name = tools[0].function.name
    if isinstance(choice, dict):
        name = str((choice.get("function") or {}).get("name") or name)
    arguments = json.dumps({"text": last_user_text(request)})
    return ToolCall(f"call_{_completion_id()[-12:]}", "function", FunctionCall(name, arguments))


def answer_text(request: ChatCompletionRequest) -> str:
    last = request.messages[-1]
    if isinstance(last, ToolMessage):
        output = last.content if isinstance(last.content, str) else ""
        text = f"mock reply to tool output: {output}"
    else:
        text = f"mock reply to: {last_user_text(request)}"
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        text = " ".join(text.split(" ")[:limit])
    return text


def _usage(request: ChatCompletionRequest, completion: str) -> Usage:
    prompt_tokens = 0
    for message in request.messages:
        content = message.content
        prompt_tokens += len(content.split()) if isinstance(content, str) else 1
    completion_tokens = len(completion.split())
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


def _finish_reason(request: ChatCompletionRequest, text: str) -> str:
    limit = request.max_completion_tokens or request.max_tokens
    return "length" if limit is not None and len(text.split()) >= limit else "stop"


def completion(request: ChatCompletionRequest, model: str) -> ChatCompletion:
    call = tool_call(request)
    text = answer_text(request) if call is None else ""
    message = ResponseMessage(content=text) if call is None else ResponseMessage(tool_calls=[call])
    finish = _finish_reason(request, text) if call is None else "tool_calls"
    choices = [
        Choice(index=i, message=message, finish_reason=finish) for i in range(request.n or 1)
    ]
    return ChatCompletion(
        id=_completion_id(),
        created=int(time.time()),
        model=model,
        choices=choices,
        usage=_usage(request, text),
        system_fingerprint="fp_promptbus_mock",
    )


def chunks(request: ChatCompletionRequest, model: str) -> list[ChatCompletionChunk]:
    """For each of the ``n`` choices: a role chunk, one chunk per word and a finish chunk
    (choices in turn, as OpenAI interleaves them); then, if asked, a usage chunk."""
    text = answer_text(request)
    ident = _completion_id()
    created = int(time.time())

    def chunk(index: int, delta: Delta, finish: str | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=ident,
            created=created,
            model=model,
            choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish)],
        )

    words = text.split(" ")
    choices = range(request.n or 1)
    out = [chunk(c, Delta(role="assistant", content="")) for c in choices]
    call = tool_call(request)
    if call is not None:
        opening = {"name": call.function.name, "arguments": ""}
        arguments = call.function.arguments
        half = len(arguments) // 2
        for c in choices:
            out.append(chunk(c, Delta(tool_calls=[ToolCallDelta(0, call.id, "function", opening)])))
            for piece in (arguments[:half], arguments[half:]):
                delta = Delta(tool_calls=[ToolCallDelta(0, function={"arguments": piece})])
                out.append(chunk(c, delta))
        out += [chunk(c, Delta(), "tool_calls") for c in choices]
        text = ""
    else:
        for i, word in enumerate(words):
            out += [chunk(c, Delta(content=word if i == 0 else f" {word}")) for c in choices]
        out += [chunk(c, Delta(), _finish_reason(request, text)) for c in choices]
    if request.stream_options is not None and request.stream_options.include_usage:
        out.append(
            ChatCompletionChunk(
                id=ident, created=created, model=model, choices=[], usage=_usage(request, text)
            )
        )
    return out


EMBEDDING_DIMENSIONS = 256


def embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic stand-in for a sentence embedding: hashed character trigrams of
    the lower-cased words, L2-normalised. Texts sharing most of their wording land close
    (cosine near 1); unrelated texts land far. Enough to exercise a semantic cache."""
    vector = [0.0] * dimensions
    for word in text.lower().split():
        word = "".join(ch for ch in word if ch.isalnum())
        padded = f"#{word}#"
        for i in range(max(1, len(padded) - 2)):
            digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest()
            vector[int.from_bytes(digest, "little") % dimensions] += 1.0
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


# ---------------------------------------------------------------- legacy text completions


def text_answers(request: CompletionRequest) -> list[tuple[str, str]]:
    """Per choice (each prompt ``n`` times, in OpenAI's order): its text and finish reason.
    The text is ``mock completion of: <prompt>``, cut to ``max_tokens`` words, after the
    prompt itself when ``echo`` asks for it."""
    out = []
    for prompt in request.prompts():
        words = f"mock completion of: {prompt}".split(" ")
        limit = request.max_tokens
        finish = "length" if limit is not None and len(words) >= limit else "stop"
        text = " ".join(words[:limit] if limit is not None else words)
        if request.echo:
            text = prompt + text
        out += [(text, finish)] * (request.n or 1)
    return out


def _text_usage(request: CompletionRequest, answers: list[tuple[str, str]]) -> Usage:
    prompt_tokens = sum(len(p.split()) for p in request.prompts())
    completion_tokens = sum(len(text.split()) for text, _ in answers)
    return Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


def text_completion(request: CompletionRequest, model: str) -> TextCompletion:
    answers = text_answers(request)
    return TextCompletion(
        id=f"cmpl-{_completion_id()[9:]}",
        created=int(time.time()),
        model=model,
        choices=[
            TextChoice(text=text, index=i, finish_reason=finish)
            for i, (text, finish) in enumerate(answers)
        ],
        usage=_text_usage(request, answers),
        system_fingerprint="fp_promptbus_mock",
    )


def text_chunks(request: CompletionRequest, model: str) -> list[TextCompletion]:
    """Per choice, one chunk per word and a last one with its finish reason; then, if
    asked, the usage chunk (no choices), as OpenAI streams them."""
    answers = text_answers(request)
    ident, created = f"cmpl-{_completion_id()[9:]}", int(time.time())

    def chunk(choices: list[TextChoice], usage: Usage | None = None) -> TextCompletion:
        return TextCompletion(id=ident, choices=choices, created=created, model=model, usage=usage)

    out = []
    for index, (text, finish) in enumerate(answers):
        for i, word in enumerate(text.split(" ")):
            out.append(chunk([TextChoice(text=word if i == 0 else f" {word}", index=index)]))
        out.append(chunk([TextChoice(text="", index=index, finish_reason=finish)]))
    if request.stream_options is not None and request.stream_options.include_usage:
        out.append(chunk([], _text_usage(request, answers)))
    return out
