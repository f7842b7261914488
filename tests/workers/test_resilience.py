"""Resilience against a real fake upstream misbehaving on command: retries, Retry-After,
deadlines, circuit breakers shared through NATS, failover and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.js.errors import KeyNotFoundError, NoKeysError

from broker.nats.embedded import free_port
from tests import bus
from tests.procs import PROMPTBUS, Proc, eventually, wait_http, wait_port

ARTIFACTS = Path(__file__).resolve().parents[2] / ".promptbus" / "artifacts"
ADMIN_KEY = "admin-test-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
# fires while `retrying` has traffic: an alert for the dashboard to show. Added at run
# time, so that whichever process evaluates (other test modules' ingresses share the
# subject prefix, with their own configs) has it.
DASHBOARD_RULE = {
    "metric": "requests_per_s",
    "op": ">",
    "threshold": 0,
    "labels": {"model": "retrying"},
    "severity": "info",
}
FAST_RETRY = {"max_attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
CALM_BREAKER = {"failure_threshold": 1000, "min_requests": 1000}
QUICK_BREAKER = {"failure_threshold": 2, "min_requests": 1000, "cooldown_s": 1.0}
ROUTED = ["weighted", "round-robin", "lowest-latency", "lowest-cost"]


class Env:
    def __init__(self, ingress: str, upstream: str, nats_url: str, config: Path) -> None:
        self.config = config
        self.ingress = ingress
        self.upstream = upstream
        self.nats_url = nats_url
        self.http = httpx.Client(base_url=ingress, timeout=30)

    def control(self, name: str, **settings: Any) -> None:
        httpx.post(f"{self.upstream}/u/{name}/_control", json=settings).raise_for_status()

    def reset(self, name: str) -> None:
        httpx.post(f"{self.upstream}/u/{name}/_reset").raise_for_status()

    def received(self, name: str) -> int:
        return int(httpx.get(f"{self.upstream}/u/{name}/_stats").json()["requests"])

    def chat(
        self, model: str, text: str = "hi", timeout: float | None = None, **extra: Any
    ) -> httpx.Response:
        headers = {"x-promptbus-timeout": str(timeout)} if timeout else {}
        body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
        return self.http.post("/v1/chat/completions", json=body, headers=headers)


def deployment(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "name": name, "base_url": f"{upstream}/u/{name}/v1", **extra}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("resilience")
    upstream_port, ingress_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    models = [
        {
            "model_name": "flaky",
            "deployments": [
                deployment(
                    "flaky-dep",
                    upstream,
                    retry={"max_attempts": 12, "initial_backoff_s": 0.005, "max_backoff_s": 0.02},
                    breaker=CALM_BREAKER,
                    max_concurrency=32,
                )
            ],
        },
        {
            "model_name": "retrying",
            "deployments": [
                deployment("retry-dep", upstream, retry=FAST_RETRY, breaker=CALM_BREAKER)
            ],
        },
        {
            "model_name": "hanging",
            "deployments": [
                deployment(
                    "hang-dep",
                    upstream,
                    timeout_s=0.3,
                    retry=FAST_RETRY | {"max_attempts": 2},
                    breaker=CALM_BREAKER,
                )
            ],
        },
        {
            "model_name": "narrow",
            "deployments": [
                deployment(
                    "narrow-dep",
                    upstream,
                    max_concurrency=1,
                    retry={"max_attempts": 1},
                    breaker=CALM_BREAKER,
                )
            ],
        },
        {
            "model_name": "primary-model",
            "fallbacks": ["backup-model"],
            "deployments": [
                deployment(
                    "primary-dep",
                    upstream,
                    retry={"max_attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02},
                    breaker={"failure_threshold": 3, "cooldown_s": 1.5, "success_threshold": 1},
                )
            ],
        },
        {
            "model_name": "backup-model",
            "deployments": [deployment("backup-dep", upstream, breaker=CALM_BREAKER)],
        },
        {
            "model_name": "unserved-model",  # no worker: its key variable is never set
            "fallbacks": ["backup-model"],
            "deployments": [deployment("unserved-dep", upstream, api_key_env="PB_NEVER_SET")],
        },
        {
            "model_name": "twins",
            "deployments": [
                deployment("twin-a", upstream, retry={"max_attempts": 1}, breaker=CALM_BREAKER),
                deployment("twin-b", upstream, retry={"max_attempts": 1}, breaker=CALM_BREAKER),
            ],
        },
        {
            "model_name": "small-context",
            "context_window_fallbacks": ["large-context"],
            "deployments": [deployment("small-dep", upstream, breaker=CALM_BREAKER)],
        },
        {"model_name": "large-context", "deployments": [{"provider": "mock", "name": "large-dep"}]},
        # Breakers that open fast and cool down in a second, one model per routing strategy:
        # the half-open probes must be sent whatever the strategy.
        *(
            {
                "model_name": f"probe-{strategy}",
                "routing": strategy,
                "deployments": [
                    deployment(
                        f"{strategy}-a",
                        upstream,
                        retry={"max_attempts": 1},
                        breaker=QUICK_BREAKER,
                        input_cost_per_mtok=0.1,  # the cheap one: lowest-cost's choice
                    ),
                    deployment(
                        f"{strategy}-b",
                        upstream,
                        retry={"max_attempts": 1},
                        breaker=QUICK_BREAKER,
                        input_cost_per_mtok=9,
                    ),
                ],
            }
            for strategy in ROUTED
        ),
        # Its key variable is never set either, and it has no fallback: nobody serves it.
        {
            "model_name": "keyless-model",
            "deployments": [deployment("keyless-dep", upstream, api_key_env="PB_NEVER_SET")],
        },
        # Unnamed: the deployment is called `default-named/0`, which no KV key may hold.
        {"model_name": "default-named", "deployments": [{"provider": "mock"}]},
        {
            "model_name": "shared-model",
            "deployments": [
                deployment(
                    "shared-dep",
                    upstream,
                    retry={"max_attempts": 1},
                    breaker={"failure_threshold": 3, "cooldown_s": 60, "min_requests": 1000},
                )
            ],
        },
        {
            "model_name": "weighted-model",
            "routing": "weighted",
            "deployments": [
                deployment("w-heavy", upstream, weight=3, breaker=CALM_BREAKER),
                deployment("w-light", upstream, weight=1, breaker=CALM_BREAKER),
            ],
        },
        {
            "model_name": "rr-model",
            "routing": "round-robin",
            "deployments": [deployment(f"rr-{x}", upstream, breaker=CALM_BREAKER) for x in "abc"],
        },
        {
            "model_name": "cost-model",
            "routing": "lowest-cost",
            "deployments": [
                deployment("pricey", upstream, input_cost_per_mtok=5, output_cost_per_mtok=15),
                deployment("cheap", upstream, input_cost_per_mtok=0.1, output_cost_per_mtok=0.4),
            ],
        },
        {
            "model_name": "latency-model",
            "routing": "lowest-latency",
            "deployments": [
                deployment("slow-dep", upstream, breaker=CALM_BREAKER),
                deployment("fast-dep", upstream, breaker=CALM_BREAKER),
            ],
        },
    ]
    config = work / "resilience.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": nats_url, **bus.config_section()},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "telemetry": {"report_every_s": 1},
                "model_list": models,
            }
        )
    )
    procs: list[Proc] = []
    try:
        mock = Proc(
            [*PROMPTBUS, "mock-upstream", "--port", str(upstream_port)], work / "upstream.log"
        )
        procs.append(mock)
        wait_port("127.0.0.1", upstream_port, mock)
        procs.append(Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log"))
        ingress = Proc(
            [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(ingress_port)],
            work / "ingress.log",
            {"PROMPTBUS_ADMIN_KEY": ADMIN_KEY},
        )
        procs.append(ingress)
        wait_http(f"http://127.0.0.1:{ingress_port}/readyz", ingress)
        result = Env(f"http://127.0.0.1:{ingress_port}", upstream, nats_url, config)
        deadline = time.monotonic() + 20
        while result.chat("large-context").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield result
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_30_percent_upstream_5xx_still_gives_100_percent_success(env: Env) -> None:
    env.control("flaky-dep", error_rate=0.3, error_status=503)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: env.chat("flaky", f"n{i}"), range(200)))
    failed = [r.text for r in responses if r.status_code != 200]
    assert not failed
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [
        f"mock reply to: n{i}" for i in range(200)
    ]
    # 12 attempts each: all failing has odds 0.3^12, 1e-4 over the 200 requests
    assert env.received("flaky-dep") > 230  # the failures were really retried


def test_retry_after_seconds_is_honoured(env: Env) -> None:
    env.reset("retry-dep")
    env.control("retry-dep", fail_next=1, error_status=429, retry_after_s=1)
    started = time.monotonic()
    response = env.chat("retrying")
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0
    assert env.received("retry-dep") == 2


def test_retry_after_http_date_is_honoured(env: Env) -> None:
    env.reset("retry-dep")
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    env.control("retry-dep", fail_next=1, error_status=503)
    started = time.monotonic()
    response = env.chat("retrying", metadata={"mock_retry_after": when})
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.9  # HTTP-dates have one-second resolution
    assert env.received("retry-dep") == 2


def test_caller_errors_are_not_retried(env: Env) -> None:
    env.reset("retry-dep")
    response = env.chat("retrying", metadata={"mock_status": "400"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "upstream_bad_request"
    assert response.headers["x-should-retry"] == "false"
    assert env.received("retry-dep") == 1


def test_retries_are_capped_by_attempts(env: Env) -> None:
    env.reset("retry-dep")
    response = env.chat("retrying", metadata={"mock_status": "502"})
    assert response.status_code == 502
    body = response.json()["error"]
    assert body["code"] == "upstream_server_error" and body["type"] == "upstream_error"
    assert response.headers["x-should-retry"] == "true"
    assert env.received("retry-dep") == 3


def test_retries_never_run_past_the_deadline(env: Env) -> None:
    env.reset("retry-dep")
    env.control("retry-dep", fail_next=10, error_status=503, retry_after_s=5)
    started = time.monotonic()
    response = env.chat("retrying", timeout=1.5)
    assert time.monotonic() - started < 1.5
    assert response.status_code == 503  # the provider's answer, not a wait past the deadline
    assert response.headers["retry-after"] == "5"
    assert env.received("retry-dep") == 1


def test_hanging_upstream_is_cut_by_the_attempt_timeout(env: Env) -> None:
    env.control("hang-dep", hang=True)
    started = time.monotonic()
    response = env.chat("hanging")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert 0.6 <= time.monotonic() - started < 3  # two attempts of 0.3 s
    assert env.received("hang-dep") == 2


def test_queued_request_past_its_deadline_never_reaches_upstream(env: Env) -> None:
    env.reset("narrow-dep")
    env.control("narrow-dep", latency_ms=800)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(env.chat, "narrow", "first", 5)
        time.sleep(0.2)  # the first holds the only slot
        late = pool.submit(env.chat, "narrow", "second", 0.3)
        assert late.result().status_code == 504
        assert slow.result().status_code == 200
    time.sleep(1.0)  # the worker gets to the expired request and drops it
    assert env.received("narrow-dep") == 1


def test_stream_dropped_before_first_chunk_is_retried(env: Env) -> None:
    env.reset("retry-dep")
    env.control("retry-dep", fail_next=1, error_status=503)
    with httpx.stream(
        "POST",
        f"{env.ingress}/v1/chat/completions",
        json={"model": "retrying", "stream": True, "messages": [{"role": "user", "content": "s"}]},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert env.received("retry-dep") == 2


def test_stream_dropped_mid_way_is_not_retried(env: Env) -> None:
    env.reset("retry-dep")
    env.control("retry-dep", drop_after_chunks=2)
    with httpx.stream(
        "POST",
        f"{env.ingress}/v1/chat/completions",
        json={
            "model": "retrying",
            "stream": True,
            "messages": [{"role": "user", "content": "a b c d"}],
        },
    ) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) == 3  # two chunks, then the error event
    error = json.loads(events[-1])["error"]
    assert error["type"] == "upstream_error"
    assert env.received("retry-dep") == 1  # bytes reached the client: no second attempt
    env.reset("retry-dep")


def test_failover_within_an_alias(env: Env) -> None:
    env.control("twin-a", error_rate=1.0, error_status=500)
    env.control("twin-b", error_rate=1.0, error_status=500)
    results = [env.chat("twins", f"t{i}") for i in range(6)]
    env.reset("twin-b")
    ok = [env.chat("twins", f"u{i}") for i in range(6)]
    assert all(r.status_code == 500 for r in results)  # both deployments failed each one
    assert all(r.status_code == 200 for r in ok)
    for response in ok:
        assert response.headers["x-promptbus-deployment"] == "twin-b"
    moved = [r for r in ok if r.headers.get("x-promptbus-failover-from") == "twin-a"]
    assert moved  # requests first pulled by twin-a were passed to twin-b
    env.reset("twin-a")


def test_context_window_fallback(env: Env) -> None:
    response = env.chat(
        "small-context",
        "long prompt",
        metadata={"mock_status": "400", "mock_error_code": "context_length_exceeded"},
    )
    assert response.status_code == 200
    assert response.headers["x-promptbus-deployment"] == "large-dep"
    assert response.headers["x-promptbus-failover-from"] == "small-dep"


async def breaker_state(nats_url: str, deployment: str) -> str:
    nc = await bus.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value("pb_breakers")
        try:
            entry = await kv.get(deployment)
        except nats.js.errors.KeyNotFoundError:
            return "closed"
        return str(json.loads(entry.value or b"{}").get("state", "closed"))
    finally:
        await nc.close()


async def test_dead_primary_opens_breaker_fails_over_and_recovers(env: Env) -> None:
    assert env.chat("primary-model").headers["x-promptbus-deployment"] == "primary-dep"
    alive = env.received("primary-dep")
    env.control("primary-dep", error_rate=1.0, error_status=503)
    answers = [await asyncio.to_thread(env.chat, "primary-model", f"d{i}") for i in range(8)]
    assert [a.status_code for a in answers] == [200] * 8  # nothing lost
    assert {a.headers["x-promptbus-deployment"] for a in answers} == {"backup-dep"}
    assert all(a.headers["x-promptbus-failover-from"] == "primary-dep" for a in answers)
    assert answers[0].json()["x_promptbus"] == {
        "deployment": "backup-dep",
        "failover_from": ["primary-dep"],
    }
    assert await breaker_state(env.nats_url, "primary-dep") == "open"
    received = env.received("primary-dep")
    assert received - alive == 3  # failure_threshold: 2 attempts of one request, 1 of the next
    more = [await asyncio.to_thread(env.chat, "primary-model", f"e{i}") for i in range(5)]
    assert all(a.status_code == 200 for a in more)
    assert env.received("primary-dep") == received  # open: no request reaches it
    env.reset("primary-dep")  # the upstream recovers
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = await asyncio.to_thread(env.chat, "primary-model", "probe")
        assert answer.status_code == 200
        if answer.headers["x-promptbus-deployment"] == "primary-dep":
            break
        await asyncio.sleep(0.2)
    assert answer.headers["x-promptbus-deployment"] == "primary-dep"  # half-open probe passed
    assert await breaker_state(env.nats_url, "primary-dep") == "closed"


def test_admin_api_requires_the_key(env: Env) -> None:
    assert env.http.get("/admin/breakers").status_code == 401
    wrong = env.http.get("/admin/breakers", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_key"
    assert ADMIN_KEY not in wrong.text


def test_admin_disabled_without_key(http: httpx.Client) -> None:
    response = http.get("/admin/deployments", headers=ADMIN)
    assert response.status_code == 403
    assert "PROMPTBUS_ADMIN_KEY" in response.json()["error"]["message"]


def test_admin_force_open_and_close(env: Env) -> None:
    env.reset("retry-dep")
    opened = env.http.post("/admin/breakers/retry-dep/open", headers=ADMIN)
    assert opened.status_code == 200 and opened.json()["forced"] is True
    listed = {  # read from the bucket itself: no wait
        b["deployment"]: b for b in env.http.get("/admin/breakers", headers=ADMIN).json()["data"]
    }
    assert listed["retry-dep"]["state"] == "open" and listed["retry-dep"]["forced"] is True
    blocked = env.chat("retrying", timeout=1)
    assert blocked.status_code == 504  # no fallback: it waited in the queue, untouched
    assert env.received("retry-dep") == 0
    closed = env.http.post("/admin/breakers/retry-dep/close", headers=ADMIN)
    assert closed.json()["state"] == "closed"
    time.sleep(0.3)
    assert env.chat("retrying").status_code == 200
    unknown = env.http.post("/admin/breakers/nope/open", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "deployment_not_found"


@pytest.mark.parametrize("path", ["default-named%2F0", "default-named/0"])
def test_admin_breakers_of_default_named_deployments(env: Env, path: str) -> None:
    """``<model>/<n>``, encoded or not, works as a breaker's name in every admin route."""
    opened = env.http.post(f"/admin/breakers/{path}/open", headers=ADMIN)
    assert opened.status_code == 200, opened.text
    assert opened.json()["forced"] is True
    listed = {  # read from the bucket itself: no wait
        b["deployment"]: b for b in env.http.get("/admin/breakers", headers=ADMIN).json()["data"]
    }
    assert listed["default-named/0"]["state"] == "open"
    assert env.chat("default-named", timeout=1).status_code == 504  # held in the queue
    closed = env.http.post(f"/admin/breakers/{path}/close", headers=ADMIN)
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    time.sleep(0.3)
    assert env.chat("default-named").status_code == 200
    deployments = env.http.get("/admin/deployments", headers=ADMIN)
    assert deployments.status_code == 200
    assert "default-named/0" in deployments.text


def test_admin_deployments_report_traffic(env: Env) -> None:
    env.reset("retry-dep")
    for _ in range(3):
        assert env.chat("retrying").status_code == 200

    def reported() -> dict[str, Any] | None:  # once a presence heartbeat carries them
        listed = env.http.get("/admin/deployments", headers=ADMIN).json()["data"]
        rows = {d["deployment"]: d for d in listed}
        return rows if rows["retry-dep"]["requests"] >= 3 else None

    rows = eventually(reported, "the heartbeats report retry-dep's requests")
    row = rows["retry-dep"]
    assert row["model"] == "retrying" and row["workers"] == 1 and row["max_concurrency"] == 16
    assert (
        row["requests"] >= 3 and row["latency_ewma_ms"] is not None and row["latency_ewma_ms"] > 0
    )
    assert row["queued"] == 0 and row["inflight"] == 0 and row["breaker"] == "closed"
    assert rows["flaky-dep"]["retries"] > 0 and rows["flaky-dep"]["failures"] > 0


def test_weighted_routing(env: Env) -> None:
    for name in ("w-heavy", "w-light"):
        env.reset(name)
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda i: env.chat("weighted-model", f"w{i}").status_code, range(200))
        )
    assert codes == [200] * 200
    heavy, light = env.received("w-heavy"), env.received("w-light")
    assert heavy + light == 200
    assert 120 <= heavy <= 180  # 3:1 -> 150 expected; binomial sd ~6


def test_round_robin_routing(env: Env) -> None:
    for x in "abc":
        env.reset(f"rr-{x}")
    for i in range(30):
        assert env.chat("rr-model", f"r{i}").status_code == 200
    assert [env.received(f"rr-{x}") for x in "abc"] == [10, 10, 10]


def test_lowest_cost_routing_and_its_fallback(env: Env) -> None:
    for name in ("cheap", "pricey"):
        env.reset(name)
    for i in range(10):
        assert env.chat("cost-model", f"c{i}").headers["x-promptbus-deployment"] == "cheap"
    assert env.received("pricey") == 0
    assert env.http.post("/admin/breakers/cheap/open", headers=ADMIN).status_code == 200
    try:
        time.sleep(0.3)
        answers = [env.chat("cost-model", f"p{i}") for i in range(5)]
        assert {a.headers["x-promptbus-deployment"] for a in answers} == {"pricey"}
    finally:
        env.http.post("/admin/breakers/cheap/close", headers=ADMIN)


def test_lowest_latency_routing(env: Env) -> None:
    env.reset("fast-dep")
    env.reset("slow-dep")
    env.control("slow-dep", latency_ms=150)

    def measured() -> bool:  # a presence heartbeat carries each latency estimate
        listed = env.http.get("/admin/deployments", headers=ADMIN).json()["data"]
        rows = {d["deployment"]: d for d in listed}
        return all(rows[d]["latency_ewma_ms"] is not None for d in ("fast-dep", "slow-dep"))

    for i in range(8):  # unmeasured deployments are tried first
        assert env.chat("latency-model", f"warm{i}").status_code == 200
        if measured():
            break
        time.sleep(0.6)  # the next heartbeat; the router reads estimates from presence
    eventually(measured, "both deployments report a latency estimate")
    assert env.received("slow-dep") >= 1 and env.received("fast-dep") >= 1
    before = env.received("slow-dep")
    for i in range(40):
        assert env.chat("latency-model", f"l{i}").status_code == 200
    assert env.received("slow-dep") - before <= 6  # only exploration (5%) goes there
    env.reset("slow-dep")


async def test_raw_nats_request_to_a_routed_model_goes_through_the_intake(env: Env) -> None:
    for x in "abc":
        env.reset(f"rr-{x}")
    nc = await bus.connect(env.nats_url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        body = json.dumps({"model": "rr-model", "messages": [{"role": "user", "content": "raw"}]})
        await nc.publish("pb.chat.rr-model", body.encode(), headers={"Pb-Reply-To": inbox})
        reply = await sub.next_msg(timeout=10)
        assert reply.headers is not None and reply.headers["Pb-Status"] == "200"
        assert reply.headers["Pb-Deployment"] in {"rr-a", "rr-b", "rr-c"}
        assert json.loads(reply.data)["choices"][0]["message"]["content"] == "mock reply to: raw"
    finally:
        await nc.close()


async def worker_beats(nats_url: str, model: str) -> list[dict[str, Any]]:
    nc = await bus.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value("pb_workers")
        try:
            keys = [k for k in await kv.keys() if k.startswith(f"{model}.")]
        except NoKeysError:  # every beat lapsed at once (a loaded machine): none seen now
            return []
        beats = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):  # lapsed since it was listed
                beats.append(json.loads((await kv.get(key)).value or b"{}"))
        return beats
    finally:
        await nc.close()


async def test_breaker_opened_by_one_process_is_open_for_all(env: Env, tmp_path: Path) -> None:
    second = Proc(
        [*PROMPTBUS, "worker", "-c", str(env.config), "--model", "shared-model"],
        tmp_path / "w2.log",
    )
    try:
        for _ in range(100):  # up to 20 s for the second worker's first heartbeat
            if len(await worker_beats(env.nats_url, "shared-model")) >= 2:
                break
            await asyncio.sleep(0.2)
        assert len(await worker_beats(env.nats_url, "shared-model")) == 2
        env.reset("shared-dep")
        env.control("shared-dep", error_rate=1.0, error_status=500)
        for i in range(12):
            response = await asyncio.to_thread(env.chat, "shared-model", f"s{i}", 0.5)
            # 500: the upstream failed; 503 circuit_open: the other process opened it
            # while this request was in hand; 504: it waited behind an open breaker
            assert response.status_code in (500, 503, 504), response.text
            if await breaker_state(env.nats_url, "shared-dep") == "open":
                break
        assert await breaker_state(env.nats_url, "shared-dep") == "open"
        # each process counts its own failures: at most 2 * (3 - 1) + 1 before one opens it
        reached = env.received("shared-dep")
        assert 3 <= reached <= 5
        await asyncio.sleep(1.2)  # heartbeats
        beats = await worker_beats(env.nats_url, "shared-model")
        assert [b["deployments"][0]["breaker"] for b in beats] == ["open", "open"]
        for i in range(4):  # neither process sends it anything while open
            assert (
                await asyncio.to_thread(env.chat, "shared-model", f"q{i}", 0.3)
            ).status_code == 504
        assert env.received("shared-dep") == reached
    finally:
        env.http.post("/admin/breakers/shared-dep/close", headers=ADMIN)
        second.stop()


def test_model_without_worker_falls_back(env: Env) -> None:
    response = env.chat("unserved-model", "anyone?")
    assert response.status_code == 200
    assert response.headers["x-promptbus-deployment"] == "backup-dep"
    assert response.headers["x-promptbus-failover-from"] == "unserved-dep"
    assert env.received("unserved-dep") == 0


def chromium_command(profile: Path) -> list[str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        return None
    return [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=7000",  # two refreshes of the page, with their fetches
    ]


def test_dashboard_in_headless_chromium(env: Env, tmp_path: Path) -> None:
    command = chromium_command(tmp_path / "profile")
    if command is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    env.reset("retry-dep")
    added = env.http.put("/admin/alerts/rules/retrying-busy", json=DASHBOARD_RULE, headers=ADMIN)
    assert added.status_code == 200, added.text
    for i in range(5):
        assert env.chat("retrying", f"dash{i}").status_code == 200

    def reported() -> bool:  # a presence heartbeat with the new counters
        listed = env.http.get("/admin/deployments", headers=ADMIN).json()["data"]
        return any(d["deployment"] == "retry-dep" and d["requests"] >= 5 for d in listed)

    eventually(reported, "a heartbeat reports retry-dep's requests")

    def charted() -> bool:  # the ingress's and worker's telemetry, back from NATS
        series = env.http.get("/admin/series?by=deployment", headers=ADMIN).json()
        rates = series["groups"].get("retry-dep", {}).get("requests_per_s", [])
        return any(rates)

    eventually(charted, "the series show retry-dep's requests")
    fired = eventually(
        lambda: [
            a
            for a in env.http.get("/admin/alerts", headers=ADMIN).json()["data"]
            if a["rule"] == "retrying-busy" and a["status"] == "firing"
        ],
        "the retrying-busy alert fires",
        timeout=30,
    )
    url = f"{env.ingress}/admin/dashboard#key={ADMIN_KEY}"
    dom = subprocess.run(
        [*command, "--dump-dom", url], capture_output=True, text=True, timeout=90
    ).stdout
    assert "promptbus" in dom
    row = dom.split('data-deployment="retry-dep"', 1)[1].split("</tr>", 1)[0]
    assert "<td>retrying</td>" in dom and 'class="closed">closed' in row
    assert "updated " in dom  # the page fetched /admin/overview with the key
    # the charts: drawn by the vendored uPlot, a line per model
    chart = dom.split('id="chart-requests_per_s"', 1)[1].split('class="chart"', 1)[0]
    assert "<canvas" in chart and "retrying" in chart
    for metric in ("latency_p95_ms", "errors", "queue_depth", "tokens_per_s", "cost_per_hour_usd"):
        assert f'id="chart-{metric}"' in dom
    alert_row = dom.split(f'data-alert="{fired[0]["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert "firing" in alert_row and "retrying-busy" in alert_row
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [*command, f"--screenshot={shot}", "--window-size=1400,2200", url],
        capture_output=True,
        timeout=90,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
    env.http.delete("/admin/alerts/rules/retrying-busy", headers=ADMIN)


def test_dashboard_without_key_asks_for_it(env: Env) -> None:
    page = env.http.get("/admin/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "admin key" in page.text and ADMIN_KEY not in page.text
    overview = env.http.get("/admin/overview")
    assert overview.status_code == 401
    data = env.http.get("/admin/overview", headers=ADMIN).json()
    assert {"deployments", "ingress", "cost"} <= set(data)
    assert data["ingress"]["requests"] > 0 and data["ingress"]["latency_buckets"]


def test_client_hanging_up_mid_stream_cancels_the_upstream_call(env: Env) -> None:
    env.reset("retry-dep")
    env.control("retry-dep", chunk_delay_ms=200)  # 40 words: ~8 s to stream in full
    words = " ".join(f"w{i}" for i in range(40))
    body = {"model": "retrying", "stream": True, "messages": [{"role": "user", "content": words}]}
    with httpx.stream("POST", f"{env.ingress}/v1/chat/completions", json=body) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == 2:
                break  # hang up: leaving the block closes the connection
    started = time.monotonic()
    stats: dict[str, Any] = {}
    while time.monotonic() - started < 5:
        stats = httpx.get(f"{env.upstream}/u/retry-dep/_stats").json()
        if stats["streams_abandoned"]:
            break
        time.sleep(0.1)
    assert stats["streams_abandoned"] == 1  # the worker dropped the upstream call
    assert time.monotonic() - started < 3  # long before the stream would have ended
    env.reset("retry-dep")


def test_a_model_no_worker_can_serve_says_why(env: Env) -> None:
    """The worker was asked for it but its key variable is unset: the 503 says so, rather
    than "start a worker", and /v1/models does not offer it."""
    response = env.chat("keyless-model", "anyone?")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "no_worker_available"
    assert "PB_NEVER_SET is not set" in error["message"]
    listed = {m["id"] for m in env.http.get("/v1/models").json()["data"]}
    assert "keyless-model" not in listed
    assert {"large-context", "unserved-model"} <= listed  # served, or by its fallback


@pytest.mark.parametrize("strategy", ROUTED)
async def test_every_routing_strategy_probes_and_closes_a_half_open_breaker(
    env: Env, strategy: str
) -> None:
    """A routed deployment whose upstream died and came back is probed once its cool-down
    is over and its breaker closes, whatever the strategy (it used to stay half-open,
    and every request went to the other deployment)."""
    model, victim = f"probe-{strategy}", f"{strategy}-a"
    env.control(victim, error_rate=1.0, error_status=503)
    for i in range(40):  # until its breaker opens (requests fail over to the other)
        answer = await asyncio.to_thread(env.chat, model, f"o{i}")
        assert answer.status_code == 200, answer.text
        if await breaker_state(env.nats_url, victim) == "open":
            break
    assert await breaker_state(env.nats_url, victim) == "open"
    env.reset(victim)  # the upstream is back
    before = env.received(victim)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        answer = await asyncio.to_thread(env.chat, model, "after")
        assert answer.status_code == 200, answer.text
        if await breaker_state(env.nats_url, victim) == "closed":
            break
        await asyncio.sleep(0.1)
    assert await breaker_state(env.nats_url, victim) == "closed"
    assert env.received(victim) > before  # the probes reached it
