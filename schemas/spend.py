"""Spend logs: one record per request, in the ``<STREAM>_SPEND`` stream (subject
``<prefix>.spend.<tenant>.<key-id>``), for ``GET /admin/requests`` and
``promptbus usage --requests``. Never a prompt, an answer or a key: ids and numbers."""

from __future__ import annotations

import msgspec
from msgspec import Struct


class SpendRecord(Struct, kw_only=True, omit_defaults=True):
    at: float  # Unix time the request ended
    request_id: str
    tenant: str
    key_id: str
    model: str  # the alias that served it (an experiment's variant)
    status: int  # the HTTP status the caller got
    deployment: str = ""  # "" when no deployment was called (cache hit, refusal)
    team: str = ""
    user: str = ""  # the end user the request named
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0  # from the worker taking it to its answer (cache: the lookup)
    cache_hit: bool = False
    failover: int = 0  # deployments that had failed it before this one
    experiment: str = ""
    error: str = ""  # the error code, when it failed
    seq: int = 0  # its place in the stream, filled in when read (the paging cursor)


spend_decoder = msgspec.json.Decoder(SpendRecord)
spend_encoder = msgspec.json.Encoder()
