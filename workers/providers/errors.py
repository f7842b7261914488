"""Map what a provider answered onto the broker's error categories.

Every category has one OpenAI-style ``code``, a message that tells the caller what to do,
and a retry verdict. The table is documented in docs/errors.md.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import msgspec

from schemas.errors import BrokerError, ErrorDetail, error_decoder, upstream_error

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = (
    "maximum context length",
    "context window",
    "too many tokens",
    "prompt is too long",  # anthropic
    "exceeds the maximum number of tokens",  # gemini
)
_QUOTA_WORDS = ("credit balance is too low",)  # anthropic answers it as a plain 400
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(
    deployment: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    detail: ErrorDetail | None = None,
) -> BrokerError:
    """The categorized error for an upstream HTTP error response.

    ``detail`` is the error as the adapter of a non-OpenAI provider read it from
    ``body`` (message, provider's type and code); without it ``body`` is read as an
    OpenAI error body.
    """
    headers = headers or {}
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    upstream_code: str | None = None
    if detail is None:
        try:
            detail = error_decoder.decode(body).error
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass
    if detail is not None:
        text, upstream_code = detail.message, detail.code or None
        upstream_type = detail.type
    else:
        text = body[:300].decode(errors="replace").strip() or "(empty body)"
        upstream_type = ""
    said = f"HTTP {status}" + (f" {upstream_code}" if upstream_code else "") + f": {text}"

    fault = _Fault(status, upstream_code, upstream_type, text.lower())
    for rule in _RULES:
        if rule.applies(fault):
            wait = f"in {retry_after:.0f}s" if retry_after is not None else "after a short wait"
            advice = rule.advice.format(wait=wait)
            return upstream_error(
                status,
                deployment,
                f"{said}. {advice}",
                code=rule.code,
                retryable=rule.retryable,
                retry_after=retry_after if rule.retryable else None,
                param=detail.param if detail is not None else None,
            )
    raise AssertionError("the last rule applies to every answer")


class _Fault(NamedTuple):
    """What a provider's error answer says, as the rules read it."""

    status: int
    code: str | None
    type: str
    lowered: str  # the message, lower-cased


class _Rule(NamedTuple):
    applies: Callable[[_Fault], bool]  # advice may name {wait}: the provider's Retry-After
    code: str
    advice: str
    retryable: bool


# First match wins: the order is the precedence (credentials before quota before rate
# limits, a context overflow before a generic 4xx, ...).
_RULES: tuple[_Rule, ...] = (
    _Rule(
        lambda f: f.status in (401, 403),
        "upstream_auth_failed",
        "The broker's credentials for this provider were refused; an operator must fix "
        "the deployment's API key. Retrying will not help.",
        False,
    ),
    _Rule(
        lambda f: (
            f.status == 402
            or f.code in _QUOTA_CODES
            or f.type == "insufficient_quota"
            or any(w in f.lowered for w in _QUOTA_WORDS)
        ),
        "upstream_quota_exceeded",
        "The provider account is out of quota or credits; retrying will not help "
        "until an operator tops it up.",
        False,
    ),
    _Rule(
        lambda f: f.status == 429,
        "upstream_rate_limited",
        "The provider is rate limiting; retry {wait}.",
        True,
    ),
    _Rule(
        lambda f: f.code in _CONTEXT_CODES or any(w in f.lowered for w in _CONTEXT_WORDS),
        "context_length_exceeded",
        "The prompt does not fit the model's context window; shorten it or use a "
        "larger-context model.",
        False,
    ),
    _Rule(
        lambda f: f.code in _FILTER_CODES or "content management policy" in f.lowered,
        "content_filtered",
        "The provider's content filter refused the request; rephrase it. Retrying "
        "the same request will not help.",
        False,
    ),
    _Rule(
        lambda f: f.status in (408, 409),
        "upstream_conflict",
        "A transient provider condition; retry.",
        True,
    ),
    _Rule(
        lambda f: f.status == 504, "upstream_timeout", "The provider timed out; retry later.", True
    ),
    _Rule(
        lambda f: f.status >= 500,
        "upstream_server_error",
        "The provider failed; retry after a short wait.",
        True,
    ),
    _Rule(
        lambda f: True,
        "upstream_bad_request",
        "The provider rejected the request as invalid; fix the request before retrying.",
        False,
    ),
)


def content_filtered(deployment: str, reason: str) -> BrokerError:
    """A provider's safety system refused the prompt in an otherwise successful answer
    (Gemini's ``promptFeedback.blockReason``): the same category as an HTTP refusal."""
    return upstream_error(
        400,
        deployment,
        f"the provider's safety filter blocked the prompt ({reason}). Rephrase it; "
        "retrying the same request will not help.",
        code="content_filtered",
        retryable=False,
    )
