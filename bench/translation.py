"""CPU cost of speaking a native provider API: `python bench/translation.py`.

Per request, in-process, no network: the request translated to the provider's body and
encoded, the provider's answer decoded and translated back to OpenAI JSON, and a stream
of chunks translated. Also the cost of a model's transformation profiles. These are the
worker-side costs an Anthropic or Gemini deployment adds over an OpenAI-compatible one
(which relays bodies unchanged).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.chat import ChatCompletionRequest, encoder, request_decoder
from schemas.config import TransformConfig
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
        ("transforms request (2 profiles)", lambda: transforms.request(request)),
        ("transforms response (rename)", lambda: transforms.response(ANTHROPIC_ANSWER)),
    ]
    print(f"{'step':<36} {'us/call':>8}")
    for name, fn in cases:
        print(f"{name:<36} {per_call_us(fn, args.seconds):8.1f}")


if __name__ == "__main__":
    main()
