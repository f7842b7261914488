"""A Responses request served by a chat deployment (broker/responses/chat_turn.py): the
chat request it means, its answer and its stream as the Responses API shapes them, as
the openai SDK's own types parse them."""

from __future__ import annotations

import msgspec
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from broker.responses.chat_turn import ChatTurn
from schemas.chat import ChatCompletionChunk, UserMessage, encoder
from schemas.responses import response_request_decoder

ASKED = response_request_decoder.decode(
    b'{"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 9}'
)
ANSWER = msgspec.json.encode(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


def _chunk(content: str | None, finish: str | None = None, usage: bool = False) -> bytes:
    choices = (
        [] if usage else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "upstream-m"}
    chunk["choices"] = choices  # type: ignore[assignment]
    if usage:
        chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}  # type: ignore[assignment]
    return encoder.encode(msgspec.convert(chunk, ChatCompletionChunk))


def test_the_chat_request_it_means() -> None:
    chat = ChatTurn(ASKED).chat
    assert chat.messages[1:] == [UserMessage("hi")]
    assert chat.messages[0].content == "be brief"  # type: ignore[union-attr]
    assert chat.max_completion_tokens == 9


def test_the_answer_is_a_response_the_sdk_parses() -> None:
    response = Response.model_validate_json(ChatTurn(ASKED).body(ANSWER))
    assert response.output_text == "hello" and response.model == "upstream-m"
    assert response.usage is not None and response.usage.total_tokens == 4
    assert response.store is False  # nothing on the bus keeps it; the ingress decides


def test_the_stream_is_typed_events_the_sdk_parses_in_order() -> None:
    turn = ChatTurn(ASKED)
    events = turn.start() + turn.chunk(_chunk("hel")) + turn.chunk(_chunk("lo", "stop"))
    events += turn.chunk(_chunk(None, usage=True)) + turn.finish()
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    parsed = [adapter.validate_json(event) for event in events]
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    assert parsed[0].type == "response.created" and parsed[-1].type == "response.completed"
    deltas = [e.delta for e in parsed if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "hello"
    final = parsed[-1].response  # type: ignore[union-attr]
    assert final.output_text == "hello" and final.usage.output_tokens == 2
