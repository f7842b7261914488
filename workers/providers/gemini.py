"""Google Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``,
``batchEmbedContents``), spoken natively.

OpenAI -> Gemini: system and developer messages become ``systemInstruction``; roles
``user``/``assistant`` become ``user``/``model`` ``contents`` with ``parts`` (``text``,
``inlineData`` for data URLs and audio, ``fileData`` for links); an assistant's tool calls
become ``functionCall`` parts and ``tool`` messages ``functionResponse`` parts (named after
the call they answer); sampling parameters go in ``generationConfig``; ``tools`` become
``functionDeclarations`` and ``tool_choice`` a ``functionCallingConfig`` mode.

Gemini -> OpenAI: each candidate is a choice; ``finishReason`` maps to ``finish_reason``
(the safety reasons to ``content_filter``); ``usageMetadata`` to ``usage``. A prompt the
safety system blocked (``promptFeedback.blockReason``, no candidates) is a 400
``content_filtered`` error. Gemini reports no token counts for embeddings: usage is 0.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    CompletionTokensDetails,
    DeveloperMessage,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    FilePart,
    FunctionCall,
    FunctionMessage,
    FunctionTool,
    ImageURLPart,
    InputAudioPart,
    PromptTokensDetails,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseMessage,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolMessage,
    UnknownFields,
    Usage,
    UserContentPart,
    UserMessage,
    encoder,
)
from schemas.config import DeploymentConfig
from schemas.errors import BrokerError, ErrorDetail
from workers.providers import translate as t
from workers.providers.base import WithoutTextCompletions
from workers.providers.errors import classify, content_filtered
from workers.providers.http import Upstream, decode_answer

PROVIDER = "Gemini"
API_VERSION = "v1beta"

SAFETY_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(
    SAFETY_REASONS, "content_filter"
)

_ID_PREFIX = f"chatcmpl-gemini-{os.urandom(4).hex()}-"
_ids = itertools.count()


# ---------------------------------------------------------------- wire structs (responses)


class _Wire(msgspec.Struct, rename="camel"):
    pass


class UsageMetadata(_Wire):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int = 0
    cached_content_token_count: int | None = None
    thoughts_token_count: int | None = None

    def openai(self) -> Usage:
        thoughts = self.thoughts_token_count or 0
        completion = self.candidates_token_count + thoughts
        cached = self.cached_content_token_count
        return Usage(
            prompt_tokens=self.prompt_token_count,
            completion_tokens=completion,
            total_tokens=self.total_token_count or self.prompt_token_count + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached else None,
            completion_tokens_details=(
                CompletionTokensDetails(reasoning_tokens=thoughts) if thoughts else None
            ),
        )


class Content(_Wire):
    parts: list[dict[str, Any]] = []
    role: str | None = None


class Candidate(_Wire):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0


class PromptFeedback(_Wire):
    block_reason: str | None = None


class GenerateContentResponse(_Wire):
    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None


class GoogleError(_Wire):
    code: int
    message: str
    status: str = ""
    details: list[dict[str, Any]] = []


class GoogleErrorBody(_Wire):
    error: GoogleError


class ContentEmbedding(_Wire):
    values: list[float]


class BatchEmbedResponse(_Wire):
    embeddings: list[ContentEmbedding]


response_decoder = msgspec.json.Decoder(GenerateContentResponse)
error_decoder = msgspec.json.Decoder(GoogleErrorBody)
embed_decoder = msgspec.json.Decoder(BatchEmbedResponse)


# ---------------------------------------------------------------- request


def _media_part(url: str) -> dict[str, Any]:
    data = t.parse_data_url(url)
    if data is None:
        return {"fileData": {"mimeType": t.guess_media_type(url), "fileUri": url}}
    return {"inlineData": {"mimeType": data[0], "data": data[1]}}


def _user_parts(content: str | list[UserContentPart], where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"text": part.text})
        elif isinstance(part, ImageURLPart):
            parts.append(_media_part(part.image_url.url))
        elif isinstance(part, InputAudioPart):
            audio = part.input_audio
            mime = "audio/wav" if audio.format == "wav" else "audio/mp3"
            parts.append({"inlineData": {"mimeType": mime, "data": audio.data}})
        elif isinstance(part, FilePart) and part.file.file_data:
            parts.append(_media_part(part.file.file_data))
        else:
            raise t.unsupported(PROVIDER, where, "a file referenced by id")
    return parts


def _function_response(content: str) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: a JSON object as is, else wrapped."""
    try:
        value = msgspec.json.decode(content)
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else {"content": content}


def _tool_config(request: ChatCompletionRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is None:
        return None
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str):
        return {"functionCallingConfig": {"mode": modes[choice]}}
    name = (choice.get("function") or {}).get("name")
    if not name:
        raise t.unsupported(PROVIDER, "tool_choice", f"tool_choice {choice!r}")
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}


def _generation_config(request: ChatCompletionRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    pairs = (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("maxOutputTokens", request.max_completion_tokens or request.max_tokens),
        ("candidateCount", request.n),
        ("presencePenalty", request.presence_penalty),
        ("frequencyPenalty", request.frequency_penalty),
        ("seed", request.seed),
    )
    for key, value in pairs:
        if value is not None:
            config[key] = value
    if request.stop is not None:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) else request.stop
    fmt = request.response_format
    if isinstance(fmt, ResponseFormatJSONObject):
        config["responseMimeType"] = "application/json"
    elif isinstance(fmt, ResponseFormatJSONSchema):
        config["responseMimeType"] = "application/json"
        if fmt.json_schema.schema is not None:
            config["responseJsonSchema"] = fmt.json_schema.schema
    return config


def to_gemini(request: ChatCompletionRequest) -> dict[str, Any]:
    """The ``generateContent`` body for an OpenAI chat request (the model is in the URL)."""
    t.refuse_openai_only(request, PROVIDER)
    system: list[str] = []
    turns = t.Turns("parts")
    add = turns.add
    call_names: dict[str, str] = {}  # tool call id -> function name, for the responses

    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = t.text_of(message.content)
            if text:
                system.append(text)
        elif isinstance(message, UserMessage):
            add("user", _user_parts(message.content, f"{where}.content"))
        elif isinstance(message, AssistantMessage):
            parts: list[dict[str, Any]] = []
            content = message.content
            text = (
                content
                if isinstance(content, str)
                else "".join(p.text for p in content or [] if isinstance(p, TextPart))
            )
            if text:
                parts.append({"text": text})
            for call in message.tool_calls or []:
                call_names[call.id] = call.function.name
                args = t.tool_arguments(call, f"{where}.tool_calls")
                parts.append({"functionCall": {"name": call.function.name, "args": args}})
            add("model", parts)
        elif isinstance(message, ToolMessage):
            name = call_names.get(message.tool_call_id)
            if name is None:
                raise t.unsupported(
                    PROVIDER,
                    f"{where}.tool_call_id",
                    "a tool result for a call no earlier assistant message made",
                )
            response = _function_response(t.text_of(message.content))
            add("user", [{"functionResponse": {"name": name, "response": response}}])
        elif isinstance(message, FunctionMessage):
            raise t.unsupported(PROVIDER, f"{where}.role", "the legacy `function` role")
    body: dict[str, Any] = {"contents": turns.turns}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if request.tools:
        declarations = []
        for tool in request.tools:
            if not isinstance(tool, FunctionTool):
                raise t.unsupported(PROVIDER, "tools", "a custom (non-function) tool")
            declaration: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters:
                declaration["parameters"] = tool.function.parameters
            declarations.append(declaration)
        body["tools"] = [{"functionDeclarations": declarations}]
    tool_config = _tool_config(request)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    generation = _generation_config(request)
    if generation:
        body["generationConfig"] = generation
    return body


# ---------------------------------------------------------------- response


def _message_parts(content: Content | None) -> tuple[str, list[dict[str, Any]]]:
    """Answer text (thoughts left out) and the function calls of a candidate."""
    if content is None:
        return "", []
    text = "".join(p.get("text", "") for p in content.parts if not p.get("thought"))
    calls = [p["functionCall"] for p in content.parts if isinstance(p.get("functionCall"), dict)]
    return text, calls


def _call_id(call: dict[str, Any], response_id: str, n: int) -> str:
    return str(call.get("id") or f"call_{response_id.removeprefix('chatcmpl-')[-16:]}_{n}")


def _finish(reason: str | None, has_calls: bool) -> str | None:
    if reason is None:
        return None
    finish = FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if has_calls and finish == "stop" else finish


def _response_id(response: GenerateContentResponse) -> str:
    return f"chatcmpl-{response.response_id}" if response.response_id else _new_id()


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):08x}"


def from_gemini(response: GenerateContentResponse, deployment: str, model: str) -> ChatCompletion:
    block = response.prompt_feedback.block_reason if response.prompt_feedback else None
    if block and not response.candidates:
        raise content_filtered(deployment, block)
    id = _response_id(response)
    choices = []
    for candidate in response.candidates:
        text, calls = _message_parts(candidate.content)
        tool_calls = [
            ToolCall(
                id=_call_id(call, id, n),
                type="function",
                function=FunctionCall(
                    name=str(call.get("name", "")), arguments=t.json_text(call.get("args", {}))
                ),
            )
            for n, call in enumerate(calls)
        ]
        message = ResponseMessage(content=text or None, tool_calls=tool_calls or None)
        finish = _finish(candidate.finish_reason, bool(tool_calls)) or "stop"
        choices.append(Choice(index=candidate.index, message=message, finish_reason=finish))
    usage = response.usage_metadata.openai() if response.usage_metadata else None
    return ChatCompletion(
        id=id,
        created=t.now(),
        model=response.model_version or model,
        choices=choices,
        usage=usage,
    )


class StreamTranslator:
    """Gemini stream responses in, OpenAI chunks out; one per streamed request."""

    def __init__(self, deployment: str, model: str, include_usage: bool) -> None:
        self._deployment = deployment
        self._model = model
        self._include_usage = include_usage
        self._id = ""
        self._created = t.now()
        self._started: set[int] = set()  # candidates whose role chunk went out
        self._calls: dict[int, int] = {}  # candidate -> tool calls sent so far
        self._usage: UsageMetadata | None = None

    def feed(self, response: GenerateContentResponse) -> list[ChatCompletionChunk]:
        block = response.prompt_feedback.block_reason if response.prompt_feedback else None
        if block and not response.candidates:
            raise content_filtered(self._deployment, block)
        if not self._id:
            self._id = _response_id(response)
            self._model = response.model_version or self._model
        if response.usage_metadata is not None:
            self._usage = response.usage_metadata
        chunks = []
        for candidate in response.candidates:
            index = candidate.index
            text, calls = _message_parts(candidate.content)
            role = None
            if index not in self._started:
                self._started.add(index)
                role = "assistant"
            deltas = []
            for call in calls:
                n = self._calls.get(index, 0)
                self._calls[index] = n + 1
                deltas.append(
                    ToolCallDelta(
                        index=n,
                        id=_call_id(call, self._id, n),
                        type="function",
                        function={
                            "name": str(call.get("name", "")),
                            "arguments": t.json_text(call.get("args", {})),
                        },
                    )
                )
            finish = _finish(candidate.finish_reason, bool(self._calls.get(index)))
            chunks.append(
                t.chunk(
                    self._id,
                    self._model,
                    self._created,
                    role=role,
                    content=text if text or role else None,
                    tool_calls=deltas or None,
                    finish_reason=finish,
                    index=index,
                )
            )
        return chunks

    def close(self) -> list[ChatCompletionChunk]:
        if self._include_usage and self._usage is not None:
            return [t.usage_chunk(self._id, self._model, self._created, self._usage.openai())]
        return []


def _retry_after(error: GoogleError) -> str | None:
    """Gemini says how long to wait in a ``RetryInfo`` detail (``"37s"``), not a header."""
    for detail in error.details:
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            return delay[:-1]
    return None


# ---------------------------------------------------------------- provider


class GeminiProvider(WithoutTextCompletions):
    api_name = PROVIDER

    def __init__(self, deployment: DeploymentConfig, api_key: str | None) -> None:
        self.name = deployment.name
        self._model = (deployment.model or deployment.name).removeprefix("models/")
        self._upstream = Upstream(deployment, self._http_error)
        version = deployment.api_version or API_VERSION
        root = f"{self._upstream.base_url}/{version}/models/{quote(self._model, safe='')}"
        self._url = f"{root}:generateContent"
        self._stream_url = f"{root}:streamGenerateContent?alt=sse"
        self._embed_url = f"{root}:batchEmbedContents"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key

    def _request_headers(self, traceparent: str | None) -> dict[str, str]:
        return (
            self._headers if traceparent is None else self._headers | {"traceparent": traceparent}
        )

    def _http_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> BrokerError:
        try:
            error = error_decoder.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            return classify(self.name, status, body, headers)
        reasons = [str(d.get("reason")) for d in error.details if d.get("reason")]
        if "API_KEY_INVALID" in reasons:
            status = 401  # Gemini answers a wrong key with 400 INVALID_ARGUMENT
        retry_after = _retry_after(error)
        if retry_after is not None:
            headers = {**headers, "Retry-After": retry_after}
        detail = ErrorDetail(error.message, error.status, code=reasons[0] if reasons else None)
        return classify(self.name, status, body, headers, detail=detail)

    forwards_unknown_fields = False  # refused with a 400 naming the field

    async def complete(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> bytes:
        body, headers = encoder.encode(to_gemini(request)), self._request_headers(traceparent)
        answer = await self._upstream.post(self._url, body, headers)
        response = decode_answer(response_decoder, answer, self.name, "response body")
        return encoder.encode(from_gemini(response, self.name, self._model))

    async def stream(
        self,
        request: ChatCompletionRequest,
        traceparent: str | None = None,
        unknown: UnknownFields | None = None,
    ) -> AsyncIterator[bytes]:
        body = encoder.encode(to_gemini(request))
        options = request.stream_options
        translator = StreamTranslator(
            self.name, self._model, bool(options and options.include_usage)
        )
        headers = self._request_headers(traceparent) | {"Accept": "text/event-stream"}
        events = self._upstream.post_events(self._stream_url, body, headers)
        async with contextlib.aclosing(events):
            async for data in events:
                part = decode_answer(response_decoder, data, self.name, "stream chunk")
                for chunk in translator.feed(part):
                    yield encoder.encode(chunk)
        for chunk in translator.close():
            yield encoder.encode(chunk)

    async def embed(
        self, request: EmbeddingRequest, traceparent: str | None = None
    ) -> EmbeddingList:
        model = f"models/{self._model}"
        item: dict[str, Any] = {"model": model}
        if request.dimensions is not None:
            item["outputDimensionality"] = request.dimensions
        body = {
            "requests": [
                item | {"content": {"parts": [{"text": text}]}} for text in request.texts()
            ]
        }
        headers = self._request_headers(traceparent)
        answer = await self._upstream.post(self._embed_url, encoder.encode(body), headers)
        embeddings = decode_answer(embed_decoder, answer, self.name, "embeddings body").embeddings
        return EmbeddingList(
            data=[Embedding(index=i, embedding=e.values) for i, e in enumerate(embeddings)],
            model=self._model,
            usage=EmbeddingUsage(prompt_tokens=0, total_tokens=0),
        )

    async def aclose(self) -> None:
        await self._upstream.aclose()
