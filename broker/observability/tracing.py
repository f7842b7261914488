"""W3C trace context (``traceparent``) without a tracing SDK: accept, mint, derive.

The trace id is what ties an HTTP request, its NATS hops and the upstream call together
in logs; each hop that calls another gets a new span id under the same trace id.
"""

from __future__ import annotations

import os
import re

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def valid(traceparent: str | None) -> bool:
    if not traceparent:
        return False
    match = _TRACEPARENT.match(traceparent.strip().lower())
    return bool(
        match
        and match.group(1) != "ff"
        and match.group(2) != _ZERO_TRACE
        and match.group(3) != _ZERO_SPAN
    )


def new_traceparent() -> str:
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def accept(traceparent: str | None) -> str:
    """The caller's trace context if it is valid, else a new sampled one."""
    if traceparent and valid(traceparent):
        return traceparent.strip().lower()
    return new_traceparent()


def child(traceparent: str | None) -> str:
    """Same trace, new span: what a hop sends to the next one."""
    if not traceparent or not valid(traceparent):
        return new_traceparent()
    version, trace_id, _, flags = traceparent.strip().lower().split("-")
    return f"{version}-{trace_id}-{os.urandom(8).hex()}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    if not traceparent or not valid(traceparent):
        return None
    return traceparent.strip().lower().split("-")[1]
