"""Typed configuration: one Struct tree loaded from ``promptbus.yaml`` plus env overrides.

Unknown keys are rejected and constraint violations name the exact key, so a typo fails
at start-up instead of silently doing nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class _Config(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class DeploymentConfig(_Config):
    """One place a model alias can be served from."""

    provider: Literal["openai", "mock"]
    name: str = ""  # defaults to "<alias>/<index>"
    base_url: str | None = None  # required for provider "openai"
    api_key_env: str | None = None  # name of the env var holding the key, never the key
    model: str | None = None  # upstream model name; defaults to the alias
    max_concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 16
    connect_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 600.0
    mock_latency_ms: Annotated[float, Meta(ge=0)] = 0.0  # provider "mock" only

    def __post_init__(self) -> None:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("`base_url` is required for provider `openai`")


class ModelConfig(_Config):
    """A model alias clients ask for and the deployments that can serve it."""

    model_name: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\s*>]+$")]
    deployments: Annotated[list[DeploymentConfig], Meta(min_length=1)]
    owned_by: str = "promptbus"

    def __post_init__(self) -> None:
        for index, deployment in enumerate(self.deployments):
            if not deployment.name:
                deployment.name = f"{self.model_name}/{index}"
            if not deployment.model:
                deployment.model = self.model_name


class NatsConfig(_Config):
    url: str | None = None  # None: start the embedded nats-server
    host: str = "127.0.0.1"  # embedded server only
    port: Port = 4222  # embedded server only; 0 picks a free port
    store_dir: str = ".promptbus/nats"  # embedded server's JetStream store
    stream: str = "PB_REQUESTS"
    subject_prefix: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")] = "pb"
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    max_queue_age_s: PositiveFloat = 3600.0  # requests older than this are discarded


class IngressConfig(_Config):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 10 * 1024 * 1024
    default_timeout_s: PositiveFloat = 600.0
    max_timeout_s: PositiveFloat = 3600.0


class WorkerConfig(_Config):
    ack_wait_s: PositiveFloat = 30.0  # redelivery delay if a worker dies holding a request
    heartbeat_s: PositiveFloat = 2.0  # presence heartbeat period
    presence_ttl_s: PositiveFloat = 10.0  # a worker unseen for this long is gone


class Config(_Config):
    model_list: list[ModelConfig]
    nats: NatsConfig = field(default_factory=NatsConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for model in self.model_list:
            if model.model_name in seen:
                raise ValueError(f"duplicate model_name `{model.model_name}`")
            seen.add(model.model_name)

    def model(self, name: str) -> ModelConfig | None:
        for model in self.model_list:
            if model.model_name == name:
                return model
        return None
