"""CPU cost of translating between APIs: `python bench/translation.py`.

Per request, in-process, no network. Worker side: the request translated to a native
provider's body and encoded, its answer decoded and translated back to OpenAI JSON, a
stream of chunks translated, and a model's transformation profiles; the costs an
Anthropic or Gemini deployment adds over an OpenAI-compatible one (which relays bodies
unchanged), and a Responses request served as chat (``ChatTurn``). Ingress side: the
Messages API onto chat and back, and what a Responses request costs there (made
stateless, its answer and stream events named as the response promptbus keeps), next to
the chat route's own decode and encode of the same request, the baseline they add to.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.messages import translation as messages
from broker.responses import conversation
from broker.responses import translation as responses
from broker.responses.chat_turn import ChatTurn
from ingress.routes import responses as ingress_responses
from schemas.chat import (
    ChatCompletionRequest,
    chunk_decoder,
    completion_decoder,
    encoder,
    request_decoder,
)
from schemas.config import TransformConfig
from schemas.depth import check_depth
from schemas.messages import messages_request_decoder
from schemas.responses import event_head_decoder, response_request_decoder
from workers.providers import anthropic, gemini
from workers.transforms import Transforms

REQUEST = msgspec.json.encode(
    {
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the weather in Paris? " * 20},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 18}'},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "temperature": 0.5,
        "max_tokens": 256,
    }
)
TEXT = "It is eighteen degrees and sunny in Paris today. " * 8
ANTHROPIC_ANSWER = msgspec.json.encode(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": TEXT}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 120, "output_tokens": 80},
    }
)
GEMINI_ANSWER = msgspec.json.encode(
    {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": TEXT}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 80},
        "modelVersion": "gemini",
        "responseId": "r1",
    }
)
ANTHROPIC_EVENTS = [
    msgspec.json.encode(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
    )
    for w in TEXT.split(" ")
]


RESPONSES_REQUEST = msgspec.json.encode(
    {
        "model": "m",
        "instructions": "You are terse.",
        "input": [
            {"role": "user", "content": "What is the weather in Paris? " * 20},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": '{"temp": 18}'},
        ],
        "tools": [
            {
                "type": "function",
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "temperature": 0.5,
        "max_output_tokens": 256,
    }
)
MESSAGES_REQUEST = msgspec.json.encode(
    {
        "model": "m",
        "system": "You are terse.",
        "max_tokens": 256,
        "messages": [
            {"role": "user", "content": "What is the weather in Paris? " * 20},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "18"}],
            },
        ],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "temperature": 0.5,
    }
)
CHAT_ANSWER = msgspec.json.encode(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200},
    }
)
CHAT_CHUNKS = [
    msgspec.json.encode(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f" {w}"}, "finish_reason": None}],
        }
    )
    for w in TEXT.split(" ")
]


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(100):
            fn()
        count += 100
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    request: ChatCompletionRequest = request_decoder.decode(REQUEST)
    transforms = Transforms(
        [
            TransformConfig(
                system_prompt="Be careful.",
                cap={"temperature": 0.3},
                strip=["user"],
                metadata={"tenant": "acme"},
            ),
            TransformConfig(response_model="acme"),
        ]
    )

    def anthropic_stream() -> None:
        translator = anthropic.StreamTranslator("d", "m", False)
        for data in ANTHROPIC_EVENTS:
            for chunk in translator.feed(anthropic.event_decoder.decode(data)):
                encoder.encode(chunk)

    def chat_request() -> None:  # what the chat route does with a body: the baseline
        check_depth(REQUEST)
        encoder.encode(request_decoder.decode(REQUEST))

    def responses_request() -> None:  # a model whose deployments are all native
        check_depth(RESPONSES_REQUEST)
        asked = response_request_decoder.decode(RESPONSES_REQUEST)
        responses.check_supported(asked)
        encoder.encode(conversation.stateless(asked, []))

    def responses_request_checked() -> None:  # ... with a chat deployment: checked as chat
        check_depth(RESPONSES_REQUEST)
        asked = response_request_decoder.decode(RESPONSES_REQUEST)
        responses.check_supported(asked)
        responses.to_chat(asked)
        encoder.encode(conversation.stateless(asked, []))

    asked = response_request_decoder.decode(RESPONSES_REQUEST)
    over_chat = ChatTurn(asked)
    answer = over_chat.body(CHAT_ANSWER)
    turn = ingress_responses.Turn(None, None, asked, [])  # type: ignore[arg-type]
    events = over_chat.start()
    for data in CHAT_CHUNKS:
        events += over_chat.chunk(data)
    events += over_chat.finish()
    carriers = ingress_responses._CARRIERS

    def responses_answer() -> None:  # named as the response promptbus keeps
        encoder.encode(turn.named(msgspec.json.decode(answer)))

    def responses_stream() -> None:  # relayed, the events carrying the response named
        for body in events:
            head = event_head_decoder.decode(body)
            if head.type in carriers:
                event = msgspec.json.decode(body)
                turn.named(event["response"])
                body = encoder.encode(event)
            b"event: " + head.type.encode() + b"\ndata: " + body + b"\n\n"

    def over_chat_request() -> None:
        encoder.encode(ChatTurn(response_request_decoder.decode(RESPONSES_REQUEST)).chat)

    def over_chat_stream() -> None:
        chat_turn = ChatTurn(asked)
        chat_turn.start()
        for data in CHAT_CHUNKS:
            chat_turn.chunk(data)
        chat_turn.finish()

    def over_chat_turn() -> None:  # what the stream case builds first, to subtract
        ChatTurn(asked)

    def messages_request() -> None:
        check_depth(MESSAGES_REQUEST)
        encoder.encode(messages.to_chat(messages_request_decoder.decode(MESSAGES_REQUEST)))

    def messages_answer() -> None:
        encoder.encode(messages.to_message(completion_decoder.decode(CHAT_ANSWER)))

    def messages_stream() -> None:
        events = messages.MessageEvents("m")
        for event in events.start():
            encoder.encode(event)
        for data in CHAT_CHUNKS:
            for event in events.chunk(chunk_decoder.decode(data)):
                encoder.encode(event)
        for event in events.finish():
            encoder.encode(event)

    def chat_stream() -> None:  # the chat route relays chunks undecoded: b"data: " + body
        for data in CHAT_CHUNKS:
            b"data: " + data + b"\n\n"

    ingress: list[tuple[str, Callable[[], object]]] = [
        ("chat request (decode, encode)", chat_request),
        ("responses request (stateless)", responses_request),
        ("responses request (checked as chat)", responses_request_checked),
        ("messages request -> chat", messages_request),
        ("chat answer (relayed)", lambda: b"" + CHAT_ANSWER),
        ("responses answer (named)", responses_answer),
        ("messages answer <- chat", messages_answer),
        (f"chat stream ({len(CHAT_CHUNKS)} chunks, relayed)", chat_stream),
        (f"responses stream ({len(events)} events, named)", responses_stream),
        (f"messages stream ({len(CHAT_CHUNKS)} chunks)", messages_stream),
    ]
    cases: list[tuple[str, Callable[[], object]]] = [
        ("anthropic request", lambda: encoder.encode(anthropic.to_anthropic(request, "m", 1024))),
        (
            "anthropic response",
            lambda: encoder.encode(
                anthropic.from_anthropic(anthropic.message_decoder.decode(ANTHROPIC_ANSWER))
            ),
        ),
        (f"anthropic stream ({len(ANTHROPIC_EVENTS)} deltas)", anthropic_stream),
        ("gemini request", lambda: encoder.encode(gemini.to_gemini(request))),
        (
            "gemini response",
            lambda: encoder.encode(
                gemini.from_gemini(gemini.response_decoder.decode(GEMINI_ANSWER), "d", "m")
            ),
        ),
        ("responses over chat: request", over_chat_request),
        ("responses over chat: answer", lambda: over_chat.body(CHAT_ANSWER)),
        (f"responses over chat: {len(CHAT_CHUNKS)} chunks", over_chat_stream),
        ("  (of which the turn's set-up)", over_chat_turn),
        ("transforms request (2 profiles)", lambda: transforms.request(request)),
        ("transforms response (rename)", lambda: transforms.response(ANTHROPIC_ANSWER)),
    ]
    print(f"{'worker side':<36} {'us/call':>8}")
    for name, fn in cases:
        print(f"{name:<36} {per_call_us(fn, args.seconds):8.1f}")
    print(f"\n{'ingress side':<36} {'us/call':>8} {'x chat':>7}")
    baseline: dict[str, float] = {}
    for name, fn in ingress:
        cost = per_call_us(fn, args.seconds)
        kind = name.split(" ")[1]  # request, answer, stream
        if name.startswith("chat"):
            baseline[kind] = cost
            print(f"{name:<36} {cost:8.1f}")
        elif baseline[kind] >= 1.0:  # a relayed body costs ~nothing: no ratio to it
            print(f"{name:<36} {cost:8.1f} {cost / baseline[kind]:7.1f}")
        else:
            print(f"{name:<36} {cost:8.1f}")


if __name__ == "__main__":
    main()
