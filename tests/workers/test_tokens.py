"""workers/tokens.py: usage read from answers, priced at the deployment's rates."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import REGISTRY

from schemas.chat import ChatCompletionRequest, Usage
from schemas.config import DeploymentConfig
from schemas.responses import ResponseRequest
from workers.tokens import TokenMeter

CHAT = msgspec.json.decode(
    b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', type=ChatCompletionRequest
)


def _meter(name: str) -> TokenMeter:
    deployment = DeploymentConfig(
        provider="mock", name=name, input_cost_per_mtok=2.0, output_cost_per_mtok=8.0
    )
    return TokenMeter(deployment, "m")


def _counted(name: str, direction: str) -> float:
    value = REGISTRY.get_sample_value(
        "promptbus_tokens_total", {"deployment": name, "direction": direction}
    )
    return value or 0.0


def test_a_response_s_usage_is_counted_and_priced() -> None:
    meter = _meter("tokens-a")
    body = b'{"id":"x","usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}'
    usage = meter.count(body, CHAT)
    assert usage == Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)
    assert meter.cost_usd == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert _counted("tokens-a", "input") == 1000
    assert _counted("tokens-a", "output") == 500


def test_a_chunk_without_usage_counts_nothing() -> None:
    meter = _meter("tokens-b")
    assert meter.count(b'{"choices":[{"delta":{"content":"hi"}}]}', CHAT) is None
    assert meter.cost_usd == 0 and _counted("tokens-b", "input") == 0


def test_a_responses_answer_reports_input_and_output_tokens() -> None:
    meter = _meter("tokens-c")
    request = msgspec.json.decode(b'{"model":"m","input":"hi"}', type=ResponseRequest)
    event = (
        b'{"type":"response.completed","response":'
        b'{"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}}'
    )
    usage = meter.count(event, request)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    assert meter.cost_usd == pytest.approx((7 * 2.0 + 3 * 8.0) / 1e6)


def test_usage_reported_apart_adds_up() -> None:
    meter = _meter("tokens-d")
    meter.add(Usage(prompt_tokens=10, completion_tokens=0, total_tokens=10))
    meter.add(Usage(prompt_tokens=5, completion_tokens=0, total_tokens=5))
    assert _counted("tokens-d", "input") == 15
    assert meter.cost_usd == pytest.approx(15 * 2.0 / 1e6)
