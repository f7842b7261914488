"""Subject, stream, consumer and bucket names: the whole NATS naming contract in one place.

    <prefix>.chat.<model-token>      chat completion requests for a model alias
    <prefix>.embed.<model-token>     embeddings requests for a model alias of mode embeddings
    <prefix>.dep.<deployment-token>  requests routed to one deployment (routed aliases)
    <prefix>.bulk.<model-token>      the batch lane: served only by capacity interactive
                                     (chat) requests leave idle
    <prefix>.cancel                  core NATS: drop the request answering to Pb-Reply-To
    <prefix>.bres.<batch>.<line>...  batch results: replies captured by the results stream
    <prefix>.dead.<model-token>      dead letters: requests that crashed or stalled workers
                                     ``nats.max_deliver`` times, kept by the dead stream
    <prefix>.usage.a.<scope>.<name-token>.<period>.<metric>
                                     usage counters admission reads (per key or tenant)
    <prefix>.usage.h.<scope>.<name-token>.<period>.<metric>
                                     what admissions hold of those budgets and quotas
    <prefix>.usage.d.<day>.<tenant>.<key>.<model>.<deployment>.<metric>
                                     usage detail rows for reports (name tokens)

A model alias becomes one subject token (``subject_token``): characters NATS gives
meaning to ('.', '*', '>', whitespace) and '%' itself are percent-encoded, so
``llama3.1:8b`` is served on ``pb.chat.llama3%2E1:8b``. Names of tenants and keys also
encode '/' (``name_token``); ``decode_token`` reverses both. Consumer names additionally
drop '/' and '\\'; KV keys have their own, stricter alphabet (``kv_key``).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from schemas.config import Config

_UNSAFE_TOKEN = re.compile(r"[.*>%\s]")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")

# KV buckets are named after the subject prefix: "pb_workers", "pb_breakers", "pb_cache".
WORKERS = "workers"
BREAKERS = "breakers"
CACHE = "cache"
KEYS = "keys"
RATELIMITS = "ratelimits"
BATCHES = "batches"
ATTEMPTS = "attempts"  # how many times workers began serving a redelivered request
FILES = "files"  # an Object Store bucket
RESPONSES = "responses"  # stored Responses API responses (previous_response_id)
EXPERIMENTS = "experiments"  # canary state per experiment, and the judge's lease
ALERTS = "alerts"  # alerts pending or firing, rules added at run time, the evaluator's lease


def bucket(prefix: str, kind: str) -> str:
    """The KV bucket of one kind for a broker with this subject prefix."""
    return f"{prefix}_{kind}"


def subject_token(name: str) -> str:
    """Any name (a model alias, a deployment, a batch id) as a single NATS subject token."""
    return _UNSAFE_TOKEN.sub(lambda m: f"%{ord(m.group()):02X}", name)


def name_token(name: str) -> str:
    """A tenant's, key's or counter's name as one token that never holds '/' either (the
    usage report and the keys bucket split on neither); empty becomes ``-``."""
    return subject_token(name).replace("/", "%2F") or "-"


def decode_token(token: str) -> str:
    """The name a ``subject_token`` or ``name_token`` was made from."""
    return unquote(token)


_UNSAFE_KV_KEY = re.compile(r"[^A-Za-z0-9_-]")


def kv_key(name: str) -> str:
    """Any name (a deployment's ``mock-gpt/0``, an alias ``llama3.1:8b``) as one KV key
    token. KV keys allow only ``-/_=.`` and alphanumerics, and ``.`` and ``/`` would split
    the name: everything else becomes ``=XX`` (hex of each UTF-8 byte), ``=`` included."""
    if not _UNSAFE_KV_KEY.search(name):
        return name
    return "".join(
        ch if not _UNSAFE_KV_KEY.match(ch) else "".join(f"={b:02X}" for b in ch.encode())
        for ch in name
    )


def breaker_key(deployment: str) -> str:
    """KV key of a deployment's breaker."""
    return kv_key(deployment)


class Subjects:
    """Names derived from one subject prefix and stream name."""

    def __init__(self, prefix: str = "pb", stream: str = "PB_REQUESTS") -> None:
        self.prefix = prefix
        self.stream = stream

    @classmethod
    def of(cls, config: Config) -> Subjects:
        """The names of the broker this config describes."""
        return cls(config.nats.subject_prefix, config.nats.stream)

    @property
    def chat_wildcard(self) -> str:
        return f"{self.prefix}.chat.>"

    def chat(self, model: str) -> str:
        return f"{self.prefix}.chat.{subject_token(model)}"

    @property
    def bulk_wildcard(self) -> str:
        return f"{self.prefix}.bulk.>"

    def bulk(self, model: str) -> str:
        """The batch lane of a model: same envelope as ``chat``, lower priority."""
        return f"{self.prefix}.bulk.{subject_token(model)}"

    def bulk_consumer(self, model: str) -> str:
        return _consumer_name("bulk", model)

    @property
    def bulk_stream(self) -> str:
        """The work queue of the batch lane, apart from interactive requests: its own
        de-duplication window, age limit and size (``provision.STREAMS``)."""
        return f"{self.stream}_BULK"

    @property
    def embed_wildcard(self) -> str:
        return f"{self.prefix}.embed.>"

    def embed(self, model: str) -> str:
        """Embeddings requests (``POST /v1/embeddings`` bodies) for a model alias."""
        return f"{self.prefix}.embed.{subject_token(model)}"

    def queue(self, model: str, mode: str = "chat") -> str:
        """Where requests for a model alias of this ``mode`` (chat, embeddings) wait."""
        return self.embed(model) if mode == "embeddings" else self.chat(model)

    def queue_consumer(self, model: str, mode: str = "chat") -> str:
        return _consumer_name("embed", model) if mode == "embeddings" else self.chat_consumer(model)

    @property
    def results_stream(self) -> str:
        """The stream that keeps batch results until they are collected."""
        return f"{self.stream}_RESULTS"

    @property
    def dead_stream(self) -> str:
        """Requests given up as poison, kept for an operator (``nats stream view``)."""
        return f"{self.stream}_DEAD"

    @property
    def dead_wildcard(self) -> str:
        return f"{self.prefix}.dead.>"

    def dead(self, model: str) -> str:
        return f"{self.prefix}.dead.{subject_token(model)}"

    @property
    def bres_wildcard(self) -> str:
        return f"{self.prefix}.bres.>"

    def bres(self, batch_id: str) -> str:
        """Prefix of one batch's result subjects: ``<prefix>.bres.<batch-id>``."""
        return f"{self.prefix}.bres.{subject_token(batch_id)}"

    @property
    def cancel(self) -> str:
        """Core NATS: ``Pb-Reply-To`` names a request whose caller went away."""
        return f"{self.prefix}.cancel"

    @property
    def dep_wildcard(self) -> str:
        return f"{self.prefix}.dep.>"

    def dep(self, deployment: str) -> str:
        return f"{self.prefix}.dep.{subject_token(deployment)}"

    def chat_consumer(self, model: str) -> str:
        """Durable consumer name for a model's queue: readable, unique, NATS-safe."""
        return _consumer_name("chat", model)

    def dep_consumer(self, deployment: str) -> str:
        return _consumer_name("dep", deployment)

    # ------------------------------------------------------------ usage counters

    @property
    def usage_stream(self) -> str:
        return f"{self.stream}_USAGE"

    @property
    def usage_wildcard(self) -> str:
        return f"{self.prefix}.usage.>"

    @property
    def usage_aggregates(self) -> str:
        return f"{self.prefix}.usage.a.>"

    def usage_aggregate(self, scope: str, ident: str, period_key: str, metric: str) -> str:
        """The counter admission reads: one key's or tenant's ``metric`` in one period."""
        return f"{self.prefix}.usage.a.{scope}.{name_token(ident)}.{period_key}.{metric}"

    def usage_hold(self, scope: str, ident: str, period_key: str, metric: str) -> str:
        """What admissions hold of that budget or quota (broker/tenancy/holds.py)."""
        return f"{self.prefix}.usage.h.{scope}.{name_token(ident)}.{period_key}.{metric}"

    def usage_detail(
        self, day: str, tenant: str, key_id: str, model: str, deployment: str, metric: str
    ) -> str:
        """A report row's counter: ``day`` is YYYYMMDD (UTC)."""
        names = ".".join(name_token(n) for n in (tenant, key_id, model, deployment))
        return f"{self.prefix}.usage.d.{day}.{names}.{metric}"

    def experiment_counter(self, experiment: str, variant: str, minute: int, metric: str) -> str:
        """One variant's ``metric`` in one minute (Unix time // 60) of an experiment."""
        return f"{self.prefix}.usage.x.{experiment}.{name_token(variant)}.{minute}.{metric}"

    def experiment_counters(self, experiment: str) -> str:
        return f"{self.prefix}.usage.x.{experiment}.>"

    @property
    def spend_stream(self) -> str:
        return f"{self.stream}_SPEND"

    def spend(self, tenant: str, key_id: str) -> str:
        """Where a request's spend record goes (broker/spend/)."""
        return f"{self.prefix}.spend.{name_token(tenant)}.{name_token(key_id)}"

    def spend_filter(self, tenant: str | None = None, key_id: str | None = None) -> str:
        """The records of one tenant, one key, or all."""
        tenant_part = name_token(tenant) if tenant else "*"
        return f"{self.prefix}.spend.{tenant_part}.{name_token(key_id) if key_id else '*'}"

    @property
    def telemetry_stream(self) -> str:
        return f"{self.stream}_TELEMETRY"

    def telemetry(self, process: str) -> str:
        """Where one process's telemetry reports go (broker/telemetry/)."""
        return f"{self.prefix}.telemetry.{name_token(process)}"

    @property
    def telemetry_wildcard(self) -> str:
        return f"{self.prefix}.telemetry.>"

    @property
    def alerts_stream(self) -> str:
        return f"{self.stream}_ALERTS"

    def alert_event(self, rule: str) -> str:
        """Where one rule's alert events (pending, firing, resolved, acknowledged) go."""
        return f"{self.prefix}.alerts.{name_token(rule)}"

    @property
    def alerts_wildcard(self) -> str:
        return f"{self.prefix}.alerts.>"

    def usage_user_detail(self, day: str, tenant: str, user: str, metric: str) -> str:
        """An end user's day (``usage --by user``)."""
        return f"{self.prefix}.usage.e.{day}.{name_token(tenant)}.{name_token(user)}.{metric}"

    def usage_user_details(self, day: str, tenant: str | None = None) -> str:
        return f"{self.prefix}.usage.e.{day}.{name_token(tenant) if tenant else '*'}.>"

    def usage_details(self, day: str, tenant: str | None = None) -> str:
        """Every report row of one day, or of one tenant's day."""
        return f"{self.prefix}.usage.d.{day}.{name_token(tenant) if tenant else '*'}.>"


def _consumer_name(kind: str, name: str) -> str:
    readable = _UNSAFE_NAME.sub("_", name)[:48]
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{kind}_{readable}_{digest}"


def parse_usage_detail(subject: str) -> tuple[str, str, str, str, str]:
    """(tenant, key id, model, deployment, metric) of a ``usage_detail`` subject."""
    tenant, key_id, model, deployment, metric = (decode_token(p) for p in subject.split(".")[-5:])
    return tenant, key_id, model, deployment, metric
