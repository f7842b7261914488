"""The public surface is small and explicit (httpx's tests/test_exported_members.py): what
``broker`` exports is what the README documents, and nothing else leaks through it."""

from __future__ import annotations

import broker
from schemas import errors

PUBLIC = {
    "BrokerClient",
    "Reply",
    "ReplyStream",
    "Config",
    "ConfigError",
    "load_config",
}


def test_the_public_surface_is_pinned() -> None:
    error_classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.BrokerError)
    }
    assert set(broker.__all__) == PUBLIC | error_classes
    for name in broker.__all__:
        assert getattr(broker, name).__module__.split(".")[0] in {"broker", "schemas"}


def test_names_are_the_objects_they_say() -> None:
    from broker.client import BrokerClient
    from schemas.settings import load_config

    assert broker.BrokerClient is BrokerClient and broker.load_config is load_config
    assert issubclass(broker.RateLimited, broker.BrokerError)
