"""OpenAI chat completion request, response and stream chunk.

Optional fields default to ``None`` and every Struct omits defaults when encoded, so a
request re-encoded for the upstream carries exactly the fields the caller set. Unknown
fields are ignored (forward compatibility with new OpenAI parameters is the caller's
risk, not a 400).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Meta(ge=1, le=2**31 - 1)]  # token counts: providers' int32
Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Dimensions = Annotated[int, Meta(ge=1, le=16_384)]  # the widest embedding models: 4-8k


class _Wire(Struct, omit_defaults=True):
    """Base for request-side Structs: encoded without the optional fields left unset,
    so the upstream receives exactly what the caller sent."""


class _Reply(Struct):
    """Base for response-side Structs: every field encoded, ``null`` included, as OpenAI does."""


# ---------------------------------------------------------------- content parts


class TextPart(_Wire, tag_field="type", tag="text"):
    text: str


class ImageURL(_Wire):
    url: NonEmptyStr
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Wire, tag_field="type", tag="image_url"):
    image_url: ImageURL


class InputAudio(_Wire):
    data: str
    format: Literal["wav", "mp3"]


class InputAudioPart(_Wire, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FileRef(_Wire):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(_Wire, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(_Wire, tag_field="type", tag="refusal"):
    refusal: str


UserContentPart = TextPart | ImageURLPart | InputAudioPart | FilePart
AssistantContentPart = TextPart | RefusalPart

# ---------------------------------------------------------------- tool calls


class FunctionCall(_Wire):
    name: str
    arguments: str


class ToolCall(_Wire):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AudioRef(_Wire):
    id: str


# ---------------------------------------------------------------- messages


class DeveloperMessage(_Wire, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class SystemMessage(_Wire, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Wire, tag_field="role", tag="user"):
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_Wire, tag_field="role", tag="assistant"):
    content: str | list[AssistantContentPart] | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AudioRef | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(_Wire, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Wire, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = (
    DeveloperMessage
    | SystemMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)

# ---------------------------------------------------------------- tools and formats


class FunctionDefinition(_Wire):
    name: NonEmptyStr
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Wire, tag_field="type", tag="function"):
    function: FunctionDefinition


class CustomTool(_Wire, tag_field="type", tag="custom"):
    custom: dict[str, Any]


Tool = FunctionTool | CustomTool


class ResponseFormatText(_Wire, tag_field="type", tag="text"):
    pass


class ResponseFormatJSONObject(_Wire, tag_field="type", tag="json_object"):
    pass


class JSONSchema(_Wire):
    name: NonEmptyStr
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormatJSONSchema(_Wire, tag_field="type", tag="json_schema"):
    json_schema: JSONSchema


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


class StreamOptions(_Wire):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Prediction(_Wire):
    type: Literal["content"]
    content: str | list[TextPart]


class AudioParams(_Wire):
    voice: str
    format: str


# ---------------------------------------------------------------- request


class ChatCompletionRequest(_Wire):
    """POST /v1/chat/completions body, with OpenAI's documented ranges enforced."""

    model: NonEmptyStr
    messages: Annotated[list[Message], Meta(min_length=1)]
    audio: AudioParams | None = None
    frequency_penalty: Penalty | None = None
    function_call: Literal["none", "auto"] | dict[str, Any] | None = None
    functions: list[FunctionDefinition] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    metadata: dict[str, str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    parallel_tool_calls: bool | None = None
    prediction: Prediction | None = None
    presence_penalty: Penalty | None = None
    prompt_cache_key: str | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: Int64 | None = None
    service_tier: str | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    tools: list[Tool] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    top_p: TopP | None = None
    user: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    web_search_options: dict[str, Any] | None = None


# ---------------------------------------------------------------- response


class PromptTokensDetails(_Reply):
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionTokensDetails(_Reply):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class Usage(_Reply):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ResponseMessage(_Reply):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class Choice(_Reply):
    index: int
    message: ResponseMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(_Reply):
    id: str
    created: int
    model: str
    choices: list[Choice]
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


# ---------------------------------------------------------------- stream chunk


class ToolCallDelta(_Reply):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict[str, Any] | None = None


class Delta(_Reply):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: dict[str, Any] | None = None


class ChunkChoice(_Reply):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(_Reply):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None
    system_fingerprint: str | None = None
    service_tier: str | None = None


# ---------------------------------------------------------------- models list


class Model(_Reply):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"


class ModelList(_Reply):
    data: list[Model]
    object: Literal["list"] = "list"


# ---------------------------------------------------------------- embeddings


class EmbeddingRequest(_Wire):
    """POST /v1/embeddings body. Token-array inputs are not supported (400)."""

    model: NonEmptyStr
    input: NonEmptyStr | Annotated[list[NonEmptyStr], Meta(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Dimensions | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class Embedding(_Reply):
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32, when asked for
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(_Reply):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Reply):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"


# ---------------------------------------------------------------- transform checks

_PROTECTED = frozenset({"model", "messages"})
_NUMERIC = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "frequency_penalty",
        "presence_penalty",
        "n",
        "top_logprobs",
    }
)


def check_transform_fields(strip: list[str], values: dict[str, Any], cap: dict[str, float]) -> None:
    """Fail at config load, naming the field, for edits a request could not take."""
    fields = frozenset(ChatCompletionRequest.__struct_fields__) - _PROTECTED
    for name in strip:
        if name not in fields:
            raise ValueError(f"cannot strip `{name}`: not an optional request field")
    for name in values:
        if name not in fields:
            raise ValueError(f"cannot set `{name}`: not an optional request field")
    try:
        msgspec.convert(
            {"model": "m", "messages": [{"role": "user", "content": "x"}]} | values,
            ChatCompletionRequest,
        )
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid request field value: {exc}") from None
    for name in cap:
        if name not in _NUMERIC:
            raise ValueError(f"cannot cap `{name}`: caps apply to {', '.join(sorted(_NUMERIC))}")


# Encoders and decoders are built once: msgspec caches type info per decoder instance.
request_decoder = msgspec.json.Decoder(ChatCompletionRequest)


class _ExactChatCompletionRequest(ChatCompletionRequest, forbid_unknown_fields=True):
    """The same request, refusing top-level fields it does not know: decoding with it
    first costs nothing extra when there are none (the usual case)."""


# Fields a request does not define, as the caller sent them (``top_k``, ``min_p``,
# ``repetition_penalty``...): forwarded to OpenAI-compatible upstreams, which define many
# of their own (vLLM, Ollama, OpenRouter), refused by native adapters (docs/providers.md).
UnknownFields = dict[str, msgspec.Raw]

S = TypeVar("S", bound=Struct)
_top_level_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class FieldKeepingDecoder(Generic[S]):
    """Decodes a request Struct and keeps aside the top-level fields it does not define.

    ``exact`` is the same Struct with ``forbid_unknown_fields``: tried first, it costs
    nothing extra when there are none (the usual case)."""

    def __init__(self, lenient: type[S], exact: type[S]) -> None:
        self._lenient = msgspec.json.Decoder(lenient)
        self._exact = msgspec.json.Decoder(exact)
        self.known = frozenset(f.encode_name for f in msgspec.structs.fields(lenient))

    def decode(self, body: bytes) -> tuple[S, UnknownFields]:
        """The request and its unknown fields (msgspec errors propagate)."""
        try:
            return self._exact.decode(body), {}
        except msgspec.ValidationError as exc:
            if "unknown field" not in str(exc):
                raise
        request = self._lenient.decode(body)
        fields = _top_level_decoder.decode(body)
        return request, {k: v for k, v in fields.items() if k not in self.known}


_chat_request_fields = FieldKeepingDecoder(ChatCompletionRequest, _ExactChatCompletionRequest)
KNOWN_REQUEST_FIELDS = _chat_request_fields.known
decode_with_unknown_fields = _chat_request_fields.decode


def with_fields(encoded: bytes, fields: UnknownFields) -> bytes:
    """``encoded`` (a JSON object) with ``fields`` added at its top level."""
    if not fields:
        return encoded
    extra = b"".join(b"," + msgspec.json.encode(k) + b":" + bytes(v) for k, v in fields.items())
    return encoded[:-1] + (extra[1:] if encoded == b"{}" else extra) + b"}"


completion_decoder = msgspec.json.Decoder(ChatCompletion)
chunk_decoder = msgspec.json.Decoder(ChatCompletionChunk)
embedding_request_decoder = msgspec.json.Decoder(EmbeddingRequest)
embedding_list_decoder = msgspec.json.Decoder(EmbeddingList)
encoder = msgspec.json.Encoder()
