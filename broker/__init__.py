"""The broker: NATS plumbing (``nats/``) and the features kept in shared state (tenancy,
batches, cache, routing), plus the Python ``BrokerClient``.

The public surface for Python callers is what this module exports (pinned by
``tests/broker/test_exported_members.py``)::

    from broker import BrokerClient, load_config, BrokerError, RateLimited

    client = await BrokerClient.connect(load_config("promptbus.yaml"), api_key=key)
    try:
        completion = await client.chat({"model": "mock-gpt", "messages": [...]})
    except RateLimited as exc:
        ...
    finally:
        await client.close()

Everything else is internal and may move.
"""

from broker.client import BrokerClient, Reply, ReplyStream
from schemas.config import Config
from schemas.errors import (
    AuthenticationError,
    BrokerError,
    CircuitOpen,
    ContextLengthExceeded,
    DeadlineExceeded,
    DeploymentFault,
    InternalError,
    InvalidRequest,
    NotFound,
    NoWorker,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
    Unavailable,
    UpstreamError,
)
from schemas.settings import ConfigError, load_config

__all__ = [
    "AuthenticationError",
    "BrokerClient",
    "BrokerError",
    "CircuitOpen",
    "Config",
    "ConfigError",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "DeploymentFault",
    "InternalError",
    "InvalidRequest",
    "NoWorker",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Reply",
    "ReplyStream",
    "RequestTooLarge",
    "Unavailable",
    "UpstreamError",
    "load_config",
]
