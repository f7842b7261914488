"""What a stored response carries forward: the conversation as Responses input items.

The ingress keeps it (``broker/responses/store.py``) and, for a ``previous_response_id``,
sends the whole conversation as ``input``: requests on the bus are stateless, so a
follow-up is served the same by a native deployment and a translated one, on any
replica. Upstreams are sent ``store: false`` and keep nothing.

Only messages and function calls are carried over: reasoning items (an upstream that
stored nothing cannot take their ids back) and built-in tool calls are not.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.responses import translation
from schemas.depth import decode_checked
from schemas.errors import invalid_request
from schemas.responses import InputItem, ResponseRequest, response_request_decoder


def turn_input(request: ResponseRequest) -> list[InputItem]:
    """This turn's ``input`` as items (a string is one user message), as the caller
    sent them."""
    if isinstance(request.input, str):
        return [InputItem(role="user", content=request.input)]
    return list(request.input)


def carried(output: list[dict[str, Any]]) -> list[InputItem]:
    """A finished response's ``output`` as the input items a follow-up continues: its
    text as an assistant message, its function calls as they were. Neither keeps the
    id an upstream gave it: an upstream that stored nothing refuses ids it does not know
    (an output message with parts needs one; a message with string content does not)."""
    items = []
    for item in output:
        kind = item.get("type")
        if kind == "message":
            parts = item.get("content") or []
            text = "".join(str(p.get("text") or p.get("refusal") or "") for p in parts)
            items.append(InputItem(role="assistant", content=text))
        elif kind == "function_call":
            call = msgspec.convert(item, InputItem, strict=False)
            items.append(msgspec.structs.replace(call, id=None, status=None))
    return items


def decode_stateless(body: bytes, where: str) -> ResponseRequest:
    """A Responses body as the bus carries it (a worker's, a batch line's): checked, and
    holding its whole conversation; ``previous_response_id`` is a 400 naming it (only
    the ingress keeps stored responses). ``where`` says where it was sent."""
    request = decode_checked(response_request_decoder, body)
    translation.check_supported(request)
    if request.previous_response_id is not None:
        raise invalid_request(
            f"`previous_response_id` is not supported {where}: send the whole conversation "
            "as `input` (the ingress resolves previous_response_id).",
            param="previous_response_id",
            code="unsupported_parameter",
        )
    return request


def stateless(request: ResponseRequest, history: list[InputItem]) -> ResponseRequest:
    """The request as it travels the bus: the conversation so far, then this turn's
    input, and no ``previous_response_id``."""
    if not history:
        return msgspec.structs.replace(request, previous_response_id=None)
    return msgspec.structs.replace(
        request, input=history + turn_input(request), previous_response_id=None
    )
