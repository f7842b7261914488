"""Capability routing: what a request needs (function tools, image input, a JSON
schema, a context window that fits its prompt), and which deployments of its model
cannot serve it, by their ``capabilities`` and ``context_window`` in config.

Those deployments are passed over the way a failed one is (``Pb-Failed``): a routed
model's request goes straight to a capable deployment, a least-busy one's is handed
back by the others, and failover stays among the capable. A model none of whose
deployments can serve the request refuses it at the door with a 400 naming the
parameter that needs what is missing.
"""

from __future__ import annotations

from schemas.chat import ChatCompletionRequest, ImageURLPart, ResponseFormatJSONSchema, UserMessage
from schemas.config import Capability, DeploymentConfig, ModelConfig
from schemas.errors import BrokerError, ContextLengthExceeded, InvalidRequest
from schemas.responses import ResponseRequest

Need = tuple[Capability, str]  # a capability, and the parameter that needs it


def chat_needs(request: ChatCompletionRequest) -> list[Need]:
    needs: list[Need] = []
    if request.tools:
        needs.append(("tools", "tools"))
    if isinstance(request.response_format, ResponseFormatJSONSchema):
        needs.append(("json_schema", "response_format"))
    for index, message in enumerate(request.messages):
        if isinstance(message, UserMessage) and not isinstance(message.content, str):
            for part, content in enumerate(message.content):
                if isinstance(content, ImageURLPart):
                    needs.append(("vision", f"messages[{index}].content[{part}]"))
                    return needs
    return needs


def responses_needs(request: ResponseRequest) -> list[Need]:
    needs: list[Need] = []
    if request.tools:
        needs.append(("tools", "tools"))
    form = request.text.format if request.text else None
    if form is not None and form.type == "json_schema":
        needs.append(("json_schema", "text.format"))
    if not isinstance(request.input, str):
        for index, item in enumerate(request.input):
            if isinstance(item.content, list):
                for part, content in enumerate(item.content):
                    if content.type == "input_image":
                        needs.append(("vision", f"input[{index}].content[{part}]"))
                        return needs
    return needs


def _lacks(deployment: DeploymentConfig, needs: list[Need], tokens: int) -> bool:
    window = deployment.context_window
    if window is not None and tokens > window:
        return True
    offered = deployment.capabilities
    return offered is not None and any(need not in offered for need, _ in needs)


def unable_for_chat(
    model: ModelConfig | None, request: ChatCompletionRequest, tokens: int
) -> tuple[str, ...]:
    """The deployments of ``model`` that cannot serve this chat request of about
    ``tokens`` prompt tokens (none, at the cost of a check, unless a deployment of it
    declares what it serves); the 400 when none can."""
    if model is None or not restricted(model):
        return ()
    return unable(model, chat_needs(request), tokens)


def unable_for_responses(
    model: ModelConfig | None, request: ResponseRequest, tokens: int
) -> tuple[str, ...]:
    """``unable_for_chat`` for a Responses request."""
    if model is None or not restricted(model):
        return ()
    return unable(model, responses_needs(request), tokens)


def restricted(model: ModelConfig) -> bool:
    """Does some deployment of ``model`` declare what it serves?"""
    return any(d.capabilities is not None or d.context_window for d in model.deployments)


def unable(model: ModelConfig, needs: list[Need], tokens: int) -> tuple[str, ...]:
    """The deployments of ``model`` that cannot serve a request with these needs and
    about ``tokens`` prompt tokens; the 400 when none can."""
    lacking = tuple(d.name for d in model.deployments if _lacks(d, needs, tokens))
    if len(lacking) < len(model.deployments):
        return lacking
    if model.context_window_fallbacks and not any(_lacks(d, needs, 0) for d in model.deployments):
        return ()  # too long only: the worker moves it to a context window fallback
    raise _refusal(model, needs, tokens)


def _refusal(model: ModelConfig, needs: list[Need], tokens: int) -> BrokerError:
    for need, param in needs:
        if not any(d.capabilities is None or need in d.capabilities for d in model.deployments):
            return InvalidRequest(
                400,
                f"No deployment of `{model.model_name}` serves `{need}`, which `{param}` "
                f"needs. Send it to a model whose deployments list `{need}` in "
                "`capabilities`, or leave it out.",
                param=param,
                code="missing_capability",
            )
    windows = [d.context_window for d in model.deployments if d.context_window is not None]
    return ContextLengthExceeded(
        400,
        f"The prompt (about {tokens} tokens) is longer than the context window of every "
        f"deployment of `{model.model_name}` that serves what it needs (at most "
        f"{max(windows, default=0)} tokens).",
        type="invalid_request_error",
        param="messages",
        code="context_length_exceeded",
    )
