"""Typed configuration: one Struct tree loaded from ``promptbus.yaml`` plus env overrides.

Unknown keys are rejected and constraint violations name the exact key, so a typo fails
at start-up instead of silently doing nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from msgspec import Meta, Struct, field

from schemas.alerts import AlertRule, Severity
from schemas.chat import check_transform_fields
from schemas.prices import BUILTIN_PRICES

Port = Annotated[int, Meta(ge=0, le=65535)]
Routing = Literal["least-busy", "weighted", "round-robin", "lowest-latency", "lowest-cost"]
Capability = Literal["tools", "vision", "json_schema"]  # what a request may need
PositiveFloat = Annotated[float, Meta(gt=0)]
Provider = Literal["openai", "azure", "anthropic", "gemini", "mock"]
# Where each native API lives unless ``base_url`` says otherwise.
DEFAULT_BASE_URLS = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


class _Config(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# nats-server's largest message. Its default is 1 MiB; NATS advises at most 8 MiB (the hard
# ceiling is 64 MiB), and prompts with long documents or many images need more than 1 MiB.
# Set deliberately on every server we start (embedded, cluster, compose: the config
# `promptbus credentials` writes, broker/nats/server_config.py).
NATS_MAX_PAYLOAD = 8 * 1024 * 1024
# What a request's envelope headers may take beside its body in one NATS message. The
# ingress refuses bodies over ``max_payload - HEADER_ROOM`` with a 413 (docs/architecture.md).
HEADER_ROOM = 64 * 1024


class RetryConfig(_Config):
    """Retries of one deployment: exponential backoff with full jitter, capped twice."""

    max_attempts: Annotated[int, Meta(ge=1, le=20)] = 3
    initial_backoff_s: PositiveFloat = 0.2
    max_backoff_s: PositiveFloat = 10.0
    max_time_s: PositiveFloat = 60.0  # all attempts and waits together, within the deadline


class BreakerConfig(_Config):
    """When a deployment is taken out of service, and how it comes back."""

    failure_threshold: Annotated[int, Meta(ge=1)] = 5  # consecutive failures that open it
    error_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5  # ...or this failure rate
    window_s: PositiveFloat = 30.0  # over this window
    min_requests: Annotated[int, Meta(ge=1)] = 20  # with at least this many requests
    cooldown_s: PositiveFloat = 10.0  # open -> half-open after this long
    half_open_probes: Annotated[int, Meta(ge=1)] = 1  # requests let through while half-open
    success_threshold: Annotated[int, Meta(ge=1)] = 2  # probe successes that close it


class DeploymentConfig(_Config):
    """One place a model alias can be served from."""

    provider: Provider  # the wire format spoken: see docs/providers.md
    name: Annotated[str, Meta(pattern=r"^[^,\s]*$")] = ""  # defaults to "<alias>/<index>"
    base_url: str | None = None  # required for "openai" and "azure" (the resource endpoint)
    api_key_env: str | None = None  # name of the env var holding the key, never the key
    model: str | None = None  # upstream model name; defaults to the alias
    max_concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 16
    rpm: Annotated[int, Meta(ge=1)] | None = None  # the upstream's own requests/minute quota
    tpm: Annotated[int, Meta(ge=1)] | None = None  # ... and tokens/minute quota
    connect_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 600.0  # between two bytes of the response
    timeout_s: PositiveFloat = 600.0  # one whole attempt
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    weight: Annotated[float, Meta(gt=0)] = 1.0  # routing: weighted
    # USD per million tokens; unset: `prices` in the config, then the built-in table
    # (schemas/prices.py), then 0. Used for costs, budgets and routing: lowest-cost.
    input_cost_per_mtok: Annotated[float, Meta(ge=0)] | None = None
    output_cost_per_mtok: Annotated[float, Meta(ge=0)] | None = None
    mock_latency_ms: Annotated[float, Meta(ge=0)] = 0.0  # provider "mock" only
    api_version: str | None = None  # azure api-version, anthropic-version, gemini: v1beta
    default_max_tokens: Annotated[int, Meta(ge=1)] = 4096  # anthropic requires max_tokens
    # How /v1/responses requests reach the upstream: "native" posts them to its
    # /responses (provider openai: OpenAI, and vLLM, Ollama ... where they serve it);
    # "chat" sends the chat request they mean. Unset: native for api.openai.com only.
    responses_api: Literal["native", "chat"] | None = None
    # What the deployment serves, when not everything: a request that needs what it
    # lacks goes to one that has it (broker/routing/capabilities.py); none: a 400.
    capabilities: list[Capability] | None = None  # unset: every capability
    context_window: Annotated[int, Meta(ge=1)] | None = None  # tokens; unset: unknown

    def __post_init__(self) -> None:
        if self.provider in ("openai", "azure") and not self.base_url:
            raise ValueError(f"`base_url` is required for provider `{self.provider}`")
        if self.provider == "azure" and not self.api_version:
            raise ValueError("`api_version` is required for provider `azure`")
        if self.base_url is None and self.provider in DEFAULT_BASE_URLS:
            self.base_url = DEFAULT_BASE_URLS[self.provider]
        if self.responses_api == "native" and self.provider != "openai":
            raise ValueError(
                "`responses_api: native` is for provider `openai`; the others are "
                "reached through chat"
            )
        if self.responses_api is None:
            host = urlsplit(self.base_url or "").hostname
            native = self.provider == "openai" and host == "api.openai.com"
            self.responses_api = "native" if native else "chat"


class TransformConfig(_Config):
    """A named set of request and response edits (workers/transforms.py), applied in
    this order: strip, defaults, set, cap, system prompt, metadata; on the way back the
    reported model and deployment are renamed."""

    strip: list[str] = []  # request fields removed before the provider sees them
    defaults: dict[str, Any] = {}  # request fields filled in when the caller left them out
    set: dict[str, Any] = {}  # request fields forced to a value, e.g. {temperature: 0}
    cap: dict[str, float] = {}  # numeric request fields limited, e.g. {temperature: 0.8}
    system_prompt: str | None = None
    system_prompt_mode: Literal["prepend", "append", "replace"] = "prepend"
    metadata: dict[str, str] = {}  # merged into the request's `metadata`
    response_model: str | None = None  # the `model` reported in responses and chunks
    response_deployment: str | None = None  # the deployment named to callers

    def __post_init__(self) -> None:
        check_transform_fields(self.strip, self.defaults | self.set, self.cap)


class ModelConfig(_Config):
    """A model alias clients ask for and the deployments that can serve it."""

    model_name: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\s*>]+$")]
    deployments: Annotated[list[DeploymentConfig], Meta(min_length=1)]
    owned_by: str = "promptbus"
    fallbacks: list[str] = []  # aliases tried in order when every deployment failed
    context_window_fallbacks: list[str] = []  # aliases for prompts too long for this one
    routing: Routing = "least-busy"
    cache_ttl_s: Annotated[float, Meta(ge=0)] | None = None  # None: cache.ttl_s; 0: off
    mode: Literal["chat", "embeddings"] = "chat"  # embeddings: served on <prefix>.embed.<m>
    transforms: list[str] = []  # names of `transforms` profiles, applied in this order

    def __post_init__(self) -> None:
        for index, deployment in enumerate(self.deployments):
            if not deployment.name:
                deployment.name = f"{self.model_name}/{index}"
            if not deployment.model:
                deployment.model = self.model_name


# The embedded nats-server's default GOMEMLIMIT (see broker/nats/embedded.py).
NATS_MEMORY_LIMIT_MB = 200


class NatsTlsConfig(_Config):
    """TLS on the bus (docs/operations.md, "TLS on the bus"). Clients verify the server
    against ``ca_file``; the embedded server and cluster serve ``cert_file``/``key_file``.
    With ``verify_clients`` the server also wants a client certificate signed by
    ``ca_file`` (mutual TLS), which the broker's processes present from
    ``client_cert_file``/``client_key_file``."""

    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None  # the server's certificate (embedded server, cluster)
    key_file: str | None = None
    client_cert_file: str | None = None  # mutual TLS: this process's certificate
    client_key_file: str | None = None
    verify_clients: bool = False  # the server refuses clients without a certificate

    def __post_init__(self) -> None:
        for cert, key in (("cert_file", "key_file"), ("client_cert_file", "client_key_file")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"nats.tls: {cert} and {key} go together")
        if self.verify_clients and self.ca_file is None:
            raise ValueError("nats.tls: verify_clients needs the ca_file that signs them")


class NatsConfig(_Config):
    url: str | None = None  # None: start the embedded nats-server
    host: str = "127.0.0.1"  # embedded server only
    port: Port = 4222  # embedded server only; 0 picks a free port
    store_dir: str = ".promptbus/nats"  # embedded server's JetStream store
    # Logins (docs/architecture.md, "The bus is a trust boundary"). The embedded server
    # and cluster generate one nkey per role in credentials_dir (mode 700, files 600) and
    # refuse everybody else; each process logs in with its role's seed from there. An
    # external deployment gives each process its own .creds file instead.
    auth: bool = True  # embedded server and cluster: require logins
    credentials_dir: str = ".promptbus/credentials"
    credentials_file: str | None = None  # this process's .creds (JWT + seed); wins if set
    tls: NatsTlsConfig | None = None  # None: plain TCP (the embedded server on 127.0.0.1)
    # Embedded server only: its Go runtime's soft memory limit (GOMEMLIMIT, which wins
    # when set in the environment); None lets the heap grow to twice its live size.
    memory_limit_mb: Annotated[int, Meta(ge=64)] | None = NATS_MEMORY_LIMIT_MB
    # Embedded server only: the processors its Go runtime uses (GOMAXPROCS, which wins
    # when set in the environment); None: half the machine's cores, at least one.
    server_cores: Annotated[int, Meta(ge=1)] | None = None
    stream: str = "PB_REQUESTS"
    subject_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")] = "pb"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    max_queue_age_s: PositiveFloat = 3600.0  # requests older than this are discarded
    max_queued_requests: Annotated[int, Meta(ge=1)] = 1_000_000  # beyond: 503 no_capacity
    # The embedded server's (and cluster's) max_payload; an external server's own setting
    # wins at run time: every process reads the limit from the server it connects to.
    max_payload_bytes: Annotated[int, Meta(ge=HEADER_ROOM + 1024, le=64 * 1024 * 1024)] = (
        NATS_MAX_PAYLOAD
    )


class IngressConfig(_Config):
    host: str = "127.0.0.1"
    port: Port = 8080
    # None: as large as a NATS message can carry (nats max_payload - 64 KiB of headers).
    # Lower it to refuse smaller bodies; higher than NATS can carry is a config error.
    max_body_bytes: Annotated[int, Meta(ge=1024)] | None = None
    default_timeout_s: PositiveFloat = 600.0
    max_timeout_s: PositiveFloat = 3600.0
    # A connection whose request headers are not all in by then gets 408 and is closed
    # (slow clients cannot hold descriptors for ever); past max_connections a new one
    # gets 503 at once. Keep max_connections under the process's open-file limit.
    header_timeout_s: PositiveFloat = 10.0
    max_connections: Annotated[int, Meta(ge=1)] = 4096
    # Requests per minute on the /v1/ routes from one client address, and in all, across
    # every replica (ingress/address_limits.py), checked before the key; None: none.
    per_ip_rpm: Annotated[int, Meta(ge=1)] | None = None
    global_rpm: Annotated[int, Meta(ge=1)] | None = None


class SemanticCacheConfig(_Config):
    """Opt-in: serve answers to prompts close in meaning (broker/cache/semantic.py)."""

    enabled: bool = False
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.95  # cosine similarity for a hit
    embeddings_base_url: str | None = None  # an OpenAI-compatible API with /embeddings
    embeddings_model: str = "text-embedding-3-small"
    api_key_env: str | None = None
    max_entries: Annotated[int, Meta(ge=1)] = 10_000

    def __post_init__(self) -> None:
        if self.enabled and not self.embeddings_base_url:
            raise ValueError("`embeddings_base_url` is required when the semantic cache is enabled")


class CacheConfig(_Config):
    """The exact response cache (broker/cache/exact.py)."""

    enabled: bool = True
    backend: Literal["memory", "nats"] = "memory"  # nats: one cache for every process
    ttl_s: Annotated[float, Meta(ge=0)] = 300.0
    deterministic_only: bool = True  # cache only temperature-0 or seeded requests
    streams: bool = False  # let streamed requests be answered from the cache too
    max_entries: Annotated[int, Meta(ge=1)] = 10_000  # memory backend
    max_bytes: Annotated[int, Meta(ge=1024)] = 100 * 1024 * 1024  # memory backend
    semantic: SemanticCacheConfig = field(default_factory=SemanticCacheConfig)


class PriceConfig(_Config):
    input_per_mtok: Annotated[float, Meta(ge=0)] = 0.0
    output_per_mtok: Annotated[float, Meta(ge=0)] = 0.0


class AuthConfig(_Config):
    """Virtual API keys (``promptbus keys``). Off: every request is the ``default``
    tenant's and no key is checked; on: a valid key is required (401/403 otherwise)."""

    required: bool = False


class AdminConfig(_Config):
    api_key_env: str = "PROMPTBUS_ADMIN_KEY"  # the admin API is off while it is unset


class WorkerConfig(_Config):
    # How long a dead worker's requests (and the slots they hold: the consumer's
    # max_ack_pending) wait before another worker gets them. Live calls are kept alive by
    # in-progress acks every ack_wait/3, so it can be short; on a cluster keep it above a
    # JetStream leader election (4-9 s), e.g. 10 s (deploy/cluster.yaml).
    ack_wait_s: PositiveFloat = 5.0
    # The largest answer a worker sends: over NATS's max_payload it goes in parts to
    # callers that reassemble them (BrokerClient, the ingress); larger: 502.
    max_reply_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024 * 1024
    # A request workers began serving this many times without answering it (it crashed
    # or stalled the worker each time) is answered 500 `poison_request` on its next
    # delivery and moved to the dead-letter subject `<prefix>.dead.<model>`. Counted in
    # starts, not JetStream deliveries: a request handed back (nak) is not an attempt.
    max_deliver: Annotated[int, Meta(ge=1, le=100)] = 3
    metrics_port: Port | None = None  # serve Prometheus metrics on this port (None: off)
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, for Prometheus to scrape
    heartbeat_s: PositiveFloat = 2.0  # presence heartbeat period
    presence_ttl_s: PositiveFloat = 10.0  # a worker unseen for this long is gone


class BatchConfig(_Config):
    """Bulk batches (broker/batches/batcher.py)."""

    max_outstanding: Annotated[int, Meta(ge=1)] = 20_000  # lines queued per batch at once
    # Lines carried by one batch-lane message, at most (and at most an eighth of the
    # model's concurrency): schemas/line_block.py. 1 publishes a message per line.
    lines_per_message: Annotated[int, Meta(ge=1, le=256)] = 32
    max_file_bytes: Annotated[int, Meta(ge=1024)] = 512 * 1024 * 1024
    results_max_age_s: PositiveFloat = 7 * 24 * 3600.0  # uncollected results expire
    # The batch lane's de-duplication window. nats-server holds about 250 bytes per line
    # published within it (for up to twice as long): 20 s at 5,000 lines/s is ~50 MB,
    # where the 120 s of the interactive stream made 1M-line batches cost ~250 MB. It must
    # outlast a block's publish timeout (10 s), when the block is published again.
    duplicate_window_s: Annotated[float, Meta(ge=15)] = 20.0
    # A batcher that stops renewing its hold on a batch (it died) is replaced after this.
    lease_ttl_s: Annotated[float, Meta(ge=1)] = 15.0


class ResponsesConfig(_Config):
    """The Responses API's stored responses (``store``, OpenAI's default)."""

    retention_s: PositiveFloat = 30 * 86400.0  # as long as OpenAI keeps them: 30 days


class SpendLogConfig(_Config):
    """One record per request (broker/spend/): who, which model and deployment, tokens,
    cost, latency, status; never prompts or keys."""

    enabled: bool = True
    retention_s: PositiveFloat = 30 * 86400.0  # records older than this are dropped


class TelemetryConfig(_Config):
    """What each process counted, reported to NATS every ``report_every_s`` for the
    dashboard's charts and the alert rules (broker/telemetry/); kept ``retention_s``."""

    enabled: bool = True
    report_every_s: Annotated[float, Meta(ge=1, le=60)] = 5.0
    retention_s: Annotated[float, Meta(ge=600)] = 3900.0  # an hour of charts, and some


class OtelConfig(_Config):
    """OpenTelemetry export over OTLP/HTTP (``pip install promptbus[otel]``): a span per
    hop (ingress, queue wait, worker, each upstream attempt) and request metrics; off by
    default. ``headers_env`` names a variable holding ``key=value,...`` headers."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318"  # a collector's OTLP/HTTP base URL
    service_name: str = "promptbus"
    export_every_s: PositiveFloat = 5.0
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0
    headers_env: str | None = None


class WebhookConfig(_Config):
    """Where alerts are sent: ``json`` posts the alert event as it is, ``slack`` a
    message for a Slack incoming webhook. The URL may come from the environment
    (``url_env``), since a Slack webhook URL is a secret."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    url: str | None = None
    url_env: str | None = None
    format: Literal["json", "slack"] = "json"
    min_severity: Severity = "info"
    timeout_s: PositiveFloat = 5.0

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"webhook `{self.name}`: set exactly one of url and url_env")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"webhook `{self.name}`: url must be http(s)")


class AlertsConfig(_Config):
    """Alert rules, evaluated every ``evaluate_every_s`` by one process at a time (a
    lease in NATS), with notifications to ``webhooks`` (broker/alerts/). Budget warnings
    fire at each percentage of ``budget_warnings`` of every key's and tenant's budget."""

    enabled: bool = True
    evaluate_every_s: Annotated[float, Meta(ge=1, le=300)] = 5.0
    rules: list[AlertRule] = []
    webhooks: list[WebhookConfig] = []
    budget_warnings: list[Annotated[float, Meta(gt=0, le=100)]] = field(
        default_factory=lambda: [80.0, 90.0]
    )
    history_retention_s: PositiveFloat = 30 * 86400.0
    notify_attempts: Annotated[int, Meta(ge=1, le=20)] = 6  # per webhook, with backoff
    repeat_s: PositiveFloat = 3600.0  # a firing alert nobody acknowledged is sent again
    budget_every_s: PositiveFloat = 30.0  # budgets are read from NATS counters this often
    notify_max_backoff_s: PositiveFloat = 30.0

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError("alerts.rules: rule names must be unique")


class CanaryConfig(_Config):
    """A split that moves ``variant`` from the first step's share of the traffic to the
    last in steps, ``step_s`` apart; rolled back to 0% by itself when, over the last
    ``window_s``, its error rate exceeds the baseline's by ``max_error_rate_increase``
    (absolute) or its p95 latency exceeds the baseline's by ``max_p95_increase`` (a
    fraction: 0.5 = 50% slower), judged once it has ``min_requests`` in the window."""

    variant: str  # the model alias on trial; the experiment's other variant is the baseline
    steps: Annotated[list[Annotated[int, Meta(ge=1, le=100)]], Meta(min_length=1)] = field(
        default_factory=lambda: [1, 5, 25, 50, 100]
    )
    step_s: PositiveFloat = 3600.0
    window_s: PositiveFloat = 300.0
    min_requests: Annotated[int, Meta(ge=1)] = 50
    max_error_rate_increase: Annotated[float, Meta(ge=0, le=1)] = 0.05
    max_p95_increase: Annotated[float, Meta(ge=0)] = 0.5
    check_s: PositiveFloat = 10.0  # how often the canary is judged


class ExperimentConfig(_Config):
    """A model alias whose traffic is split between variants (other aliases)."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    model: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\s*>]+$")]
    variants: Annotated[dict[str, Annotated[int, Meta(ge=0)]], Meta(min_length=2)]
    # sticky: the same end user (the request's `user`, or x-promptbus-user) or key always
    # gets the same variant (hash-based); none: each request is drawn anew
    sticky: Literal["none", "user", "key"] = "none"
    canary: CanaryConfig | None = None


class Config(_Config):
    model_list: list[ModelConfig]
    nats: NatsConfig = field(default_factory=NatsConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    prices: dict[str, PriceConfig] = field(default_factory=dict)  # by upstream model name
    transforms: dict[str, TransformConfig] = {}  # profiles, named by models' `transforms`
    batch: BatchConfig = field(default_factory=BatchConfig)
    responses: ResponsesConfig = field(default_factory=ResponsesConfig)
    experiments: list[ExperimentConfig] = []
    spend_log: SpendLogConfig = field(default_factory=SpendLogConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    otel: OtelConfig = field(default_factory=OtelConfig)

    def __post_init__(self) -> None:
        carried = self.nats.max_payload_bytes - HEADER_ROOM
        if self.ingress.max_body_bytes is None:
            self.ingress.max_body_bytes = carried
        elif self.ingress.max_body_bytes > carried:
            raise ValueError(
                f"ingress.max_body_bytes ({self.ingress.max_body_bytes}) is more than a NATS "
                f"message carries: nats.max_payload_bytes ({self.nats.max_payload_bytes}) "
                f"- {HEADER_ROOM} bytes of headers = {carried}"
            )
        seen: set[str] = set()
        deployments: set[str] = set()
        for model in self.model_list:
            if model.model_name in seen:
                raise ValueError(f"duplicate model_name `{model.model_name}`")
            seen.add(model.model_name)
            for deployment in model.deployments:
                if deployment.name in deployments:
                    raise ValueError(f"duplicate deployment name `{deployment.name}`")
                deployments.add(deployment.name)
        for model in self.model_list:
            for other in model.fallbacks + model.context_window_fallbacks:
                if other not in seen:
                    raise ValueError(
                        f"model `{model.model_name}` falls back to unknown model `{other}`"
                    )
                if other == model.model_name:
                    raise ValueError(f"model `{model.model_name}` falls back to itself")
                target = self.model(other)
                if target is not None and target.mode != model.mode:
                    raise ValueError(
                        f"model `{model.model_name}` ({model.mode}) falls back to "
                        f"`{other}`, which serves {target.mode}"
                    )
            for name in model.transforms:
                if name not in self.transforms:
                    raise ValueError(
                        f"model `{model.model_name}` uses unknown transform profile `{name}`"
                    )
            if model.mode == "embeddings":
                for deployment in model.deployments:
                    if deployment.provider == "anthropic":
                        raise ValueError(
                            f"deployment `{deployment.name}`: provider `anthropic` has no "
                            "embeddings API"
                        )
        for model in self.model_list:
            for deployment in model.deployments:
                self._price(deployment, deployment.model or model.model_name)
        self._check_experiments(seen)

    def _check_experiments(self, models: set[str]) -> None:
        names: set[str] = set()
        aliases: set[str] = set()
        for experiment in self.experiments:
            where = f"experiment `{experiment.name}`"
            if experiment.name in names:
                raise ValueError(f"duplicate {where}")
            names.add(experiment.name)
            if experiment.model in models or experiment.model in aliases:
                raise ValueError(f"{where}: model `{experiment.model}` is already a model alias")
            aliases.add(experiment.model)
            for variant in experiment.variants:
                if variant not in models:
                    raise ValueError(f"{where}: variant `{variant}` is not in model_list")
            if not any(experiment.variants.values()) and experiment.canary is None:
                raise ValueError(f"{where}: every variant has weight 0")
            canary = experiment.canary
            if canary is not None:
                if canary.variant not in experiment.variants or len(experiment.variants) != 2:
                    raise ValueError(
                        f"{where}: a canary needs exactly two variants, its `variant` one of them"
                    )
                if canary.steps != sorted(canary.steps):
                    raise ValueError(f"{where}: canary steps must rise")

    def experiment(self, alias: str) -> ExperimentConfig | None:
        for experiment in self.experiments:
            if experiment.model == alias:
                return experiment
        return None

    def _price(self, deployment: DeploymentConfig, upstream_model: str) -> None:
        """Fill a deployment's unset prices: config ``prices``, built-in table, else 0."""
        configured = self.prices.get(upstream_model)
        if configured is not None:
            listed = (configured.input_per_mtok, configured.output_per_mtok)
        else:
            listed = BUILTIN_PRICES.get(upstream_model, (0.0, 0.0))
        if deployment.input_cost_per_mtok is None:
            deployment.input_cost_per_mtok = listed[0]
        if deployment.output_cost_per_mtok is None:
            deployment.output_cost_per_mtok = listed[1]

    def model(self, name: str) -> ModelConfig | None:
        for model in self.model_list:
            if model.model_name == name:
                return model
        return None
