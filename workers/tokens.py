"""What a deployment's answers used and cost: usage read from a response or a stream's
usage chunk, priced at the deployment's rates, counted in its metrics."""

from __future__ import annotations

import msgspec

from broker.observability import metrics
from broker.responses import translation as responses_translation
from schemas.chat import ChatCompletionRequest, Usage
from schemas.completions import CompletionRequest
from schemas.config import DeploymentConfig
from schemas.responses import ResponseRequest, usage_in

Conversation = ChatCompletionRequest | CompletionRequest | ResponseRequest


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


_usage_decoder = msgspec.json.Decoder(_UsageOnly)


class TokenMeter:
    """One deployment's token and cost counters (``cost_usd``: its total so far)."""

    def __init__(self, deployment: DeploymentConfig, model_name: str) -> None:
        self._input_rate = deployment.input_cost_per_mtok or 0.0
        self._output_rate = deployment.output_cost_per_mtok or 0.0
        self.cost_usd = 0.0
        name = deployment.name
        self._m_tokens_in = metrics.TOKENS.labels(name, "input")
        self._m_tokens_out = metrics.TOKENS.labels(name, "output")
        self._m_cost = metrics.COST.labels(model_name, name)

    def cost(self, usage: Usage) -> float:
        """What ``usage`` costs at the deployment's prices, in USD."""
        return (
            usage.prompt_tokens * self._input_rate + usage.completion_tokens * self._output_rate
        ) / 1e6

    def count(self, body: bytes, request: Conversation) -> Usage | None:
        """Usage from a response or the usage chunk of a stream; most chunks have none.
        A Responses upstream reports it in its response object (or last event)."""
        if b'"usage":{' not in body:
            return None
        if isinstance(request, ResponseRequest):
            reported = usage_in(body)
            usage = responses_translation.chat_usage(reported) if reported else None
        else:
            usage = _usage_decoder.decode(body).usage
        if usage is not None:
            self.add(usage)
        return usage

    def add(self, usage: Usage) -> None:
        """Count ``usage`` (an answer's, read here or reported apart, as embeddings')."""
        self._m_tokens_in.inc(usage.prompt_tokens)
        self._m_tokens_out.inc(usage.completion_tokens)
        cost = self.cost(usage)
        if cost:
            self.cost_usd += cost
            self._m_cost.inc(cost)
