"""The nesting limit of request JSON, checked before any decoder sees the body.

msgspec (like every recursive decoder) raises ``RecursionError`` on JSON nested a few
thousand levels deep, and a recursion error may surface anywhere: in a handler, a log
formatter, the encoder of an error reply. So depth is a limit of its own, enforced at
each door (ingress, worker for NATS callers, batcher for batch lines) as a 400 that
names where the body got too deep. ``MAX_JSON_DEPTH`` levels of arrays and objects,
the request object itself counted: far beyond any real tool or response schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import msgspec

from schemas.chat import ChatCompletionRequest, UnknownFields, decode_with_unknown_fields
from schemas.errors import BrokerError, InvalidRequest, from_validation_error

MAX_JSON_DEPTH = 64

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"\s*:|"(?:[^"\\]|\\.)*"|[\[\]{}]')


def check_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise a 400 if ``body`` nests arrays and objects more than ``limit`` deep.

    Cheap for ordinary bodies: under ``limit`` opening brackets there is nothing to
    check. Otherwise strings are cut out and the innermost bracket pairs removed, one
    level per pass, all in C: after ``limit`` passes nothing is left of a shallow body.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if not shorter or len(shorter) == len(brackets):
            return  # shallow enough, or unbalanced: not JSON, which the decoder will say
        brackets = shorter
    raise too_deep(_deep_path(body, limit), limit)


def too_deep(param: str | None, limit: int = MAX_JSON_DEPTH) -> BrokerError:
    return InvalidRequest(
        400,
        f"JSON nested more than {limit} levels deep"
        + (f" at `{param}`" if param else "")
        + " (the broker's nesting limit).",
        param=param,
        code="json_too_deep",
    )


def _deep_path(body: bytes, limit: int) -> str | None:
    """Where the nesting passes ``limit``, as a param path (``tools.function.parameters``):
    the first three object keys on the way down."""
    names: list[str] = []  # the key each open container was opened under, "" if none
    key = ""
    for match in _TOKEN.finditer(body):
        token = match.group()
        if token in (b"{", b"["):
            names.append(key)
            key = ""
            if len(names) > limit:
                break
        elif token in (b"}", b"]"):
            if names:
                names.pop()
            key = ""
        elif token.endswith(b":"):
            key = token[: token.rindex(b'"')][1:].decode(errors="replace")
    return ".".join([n for n in names if n][:3]) or None


T = TypeVar("T")


def decode_checked(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode a caller's JSON body: the depth limit first, then the schema; every
    failure a 400 naming its param (never a RecursionError)."""
    return checked(decoder.decode, body)


def decode_chat_request(body: bytes) -> tuple[ChatCompletionRequest, UnknownFields]:
    """A chat request and its unknown top-level fields, checked like :func:`decode_checked`."""
    return checked(decode_with_unknown_fields, body)


def checked(decode: Callable[[bytes], T], body: bytes) -> T:
    """``decode(body)`` behind the depth limit, its failures 400s naming their param."""
    check_depth(body)
    try:
        return decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise from_validation_error(exc) from None
    except RecursionError:  # a limit passed to check_depth above the decoder's own
        raise too_deep(None) from None
