"""Per-address and global request limits at the door (ingress/address_limits.py), over
two ingress processes sharing one NATS server: the limits hold across both, refusals
are OpenAI-shaped 429s with Retry-After, and nothing outside /v1/ is limited."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import yaml

from broker.nats.embedded import free_port
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http

PER_IP, GLOBAL = 4, 6


@pytest.fixture(scope="module")
def ingresses(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[list[str]]:
    work = tmp_path_factory.mktemp("address-limits")
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "al",
                    "stream": "AL_REQ",
                    **bus.config_section(),
                },
                "ingress": {"per_ip_rpm": PER_IP, "global_rpm": GLOBAL},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [{"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]}],
            }
        )
    )
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    bases = []
    try:
        for index in range(2):
            port = free_port()
            log = work / f"ingress-{index}.log"
            procs.append(Proc([*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)], log))
            bases.append(f"http://127.0.0.1:{port}")
        for base, proc in zip(bases, procs[1:], strict=True):
            wait_http(f"{base}/readyz", proc)
        yield bases
    finally:
        for proc in procs:
            proc.stop()


def _ask(base: str, address: str) -> httpx.Response:
    """A chat request as a proxy on 127.0.0.1 (trusted) forwards it for ``address``."""
    return httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-forwarded-for": address},
        timeout=20,
    )


def test_per_address_and_global_limits_hold_across_replicas(ingresses: list[str]) -> None:
    one, two = ingresses
    first = [_ask((one, two)[i % 2], "203.0.113.1") for i in range(PER_IP + 1)]
    assert [r.status_code for r in first] == [200] * PER_IP + [429]
    refused = first[-1]
    error = refused.json()["error"]
    assert error["code"] == "ip_rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "203.0.113.1" in error["message"] and int(refused.headers["retry-after"]) >= 1
    # Another address has its own bucket, until the global one (6) is used up.
    second = [_ask((two, one)[i % 2], "2001:db8::7") for i in range(GLOBAL - PER_IP + 1)]
    assert [r.status_code for r in second] == [200] * (GLOBAL - PER_IP) + [429]
    assert second[-1].json()["error"]["code"] == "global_rate_limit_exceeded"
    # Outside /v1/ nothing is limited: health checks and metrics keep answering.
    assert (
        httpx.get(f"{one}/healthz", headers={"x-forwarded-for": "203.0.113.1"}).status_code == 200
    )
