"""The embedded nats-server's environment: what its Go runtime may use."""

from __future__ import annotations

import pytest

from broker.nats import embedded
from broker.nats.embedded import default_server_cores, server_environment


def test_the_server_gets_half_the_cores_and_a_memory_limit_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    for cores, half in ((1, 1), (2, 1), (3, 1), (8, 4), (None, 1)):
        monkeypatch.setattr(embedded.os, "cpu_count", lambda cores=cores: cores)
        assert default_server_cores() == half
        env = server_environment(200)
        assert env["GOMAXPROCS"] == str(half) and env["GOMEMLIMIT"] == "200MiB"


def test_configured_cores_win_over_the_default_and_the_environment_over_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GOMAXPROCS", raising=False)
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    env = server_environment(None, cores=3)
    assert env["GOMAXPROCS"] == "3" and "GOMEMLIMIT" not in env  # None: no soft limit
    monkeypatch.setenv("GOMAXPROCS", "6")
    monkeypatch.setenv("GOMEMLIMIT", "1GiB")
    env = server_environment(128, cores=3)
    assert env["GOMAXPROCS"] == "6" and env["GOMEMLIMIT"] == "1GiB"
