"""Keys, tenants, rate limits, budgets and quotas across three ingress processes.

One worker and three ingresses share one NATS server (their own subject prefix); every
request crosses real sockets. Limits hold exactly because their state lives in NATS.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from nats.js.errors import NotFoundError

from broker.client import BrokerClient
from broker.nats.embedded import free_port
from broker.nats.subjects import Subjects
from broker.tenancy.usage import period_key
from schemas.errors import AuthenticationError, BrokerError
from schemas.settings import load_config
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http

ADMIN = "tenancy-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Tenancy:
    def __init__(self, ingresses: list[str], config: Path, nats_url: str, logs: list[Path]):
        self.ingresses = ingresses
        self.config = config
        self.nats_url = nats_url
        self.logs = logs
        self._next = itertools.cycle(ingresses)

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.ingresses[0]}{path}", headers=ADMIN_HEADERS, timeout=10, **kwargs
        )

    def create_key(self, **spec: Any) -> str:
        response = self.admin("POST", "/admin/keys", json=spec)
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def chat(
        self, key: str | None, text: str = "hello world", model: str = "mock-gpt", base: str = ""
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(
            f"{base or next(self._next)}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": text}]},
            headers=headers,
            timeout=20,
        )


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Tenancy]:
    work = tmp_path_factory.mktemp("tenancy")
    config = work / "promptbus.yaml"
    priced = {"input_cost_per_mtok": 1_000_000, "output_cost_per_mtok": 1_000_000}  # $1/token
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "tn",
                    "stream": "TN_REQ",
                    **bus.config_section(),
                },
                "auth": {"required": True},
                "transforms": {"short": {"set": {"max_tokens": 2}, "response_model": "house"}},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "alerts": {"evaluate_every_s": 1, "budget_every_s": 1},
                "model_list": [
                    {
                        "model_name": "mock-gpt",
                        "deployments": [{"provider": "mock", "max_concurrency": 64, **priced}],
                    },
                    {"model_name": "other-model", "deployments": [{"provider": "mock"}]},
                    {
                        "model_name": "slow-gpt",  # 10 requests a second
                        "deployments": [
                            {"provider": "mock", "mock_latency_ms": 200, "max_concurrency": 2}
                        ],
                    },
                    {
                        "model_name": "fragile-gpt",  # one deployment always fails: failover
                        "deployments": [
                            {
                                "provider": "openai",
                                "name": "dead-dep",
                                "base_url": f"http://127.0.0.1:{free_port()}/v1",
                                "retry": {"max_attempts": 1},
                                "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                            },
                            {"provider": "mock", "name": "live-dep"},
                        ],
                    },
                ],
            }
        )
    )
    env = {"PROMPTBUS_ADMIN_KEY": ADMIN}
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    procs.append(Proc([*PROMPTBUS, "batcher", "-c", str(config)], work / "batcher.log"))
    ports = [free_port() for _ in range(3)]
    try:
        for i, port in enumerate(ports):
            args = [*PROMPTBUS, "--log-level", "DEBUG", "ingress", "-c", str(config)]
            procs.append(Proc([*args, "--port", str(port)], work / f"ingress{i}.log", env))
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, proc in zip(bases, procs[2:], strict=True):
            wait_http(f"{base}/readyz", proc)
        env_ = Tenancy(bases, config, nats_url, [p.log for p in procs])
        probe = env_.create_key(tenant="probe")
        for base in bases:  # every ingress sees keys, and the worker serves
            for _ in range(100):
                if env_.chat(probe, base=base).status_code == 200:
                    break
                asyncio.run(asyncio.sleep(0.1))
            else:
                raise TimeoutError(f"{base} never served:\n{procs[0].output()}")
        yield env_
    finally:
        for proc in reversed(procs):
            proc.stop()


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code", "param"}, body
    return dict(body["error"])


def test_missing_unknown_and_revoked_keys_get_401(tenancy: Tenancy) -> None:
    missing = tenancy.chat(None)
    assert missing.status_code == 401 and _error(missing)["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in _error(missing)["message"]
    bogus = "sk-pb-" + "x" * 40
    wrong = tenancy.chat(bogus)
    assert wrong.status_code == 401
    assert bogus not in wrong.text and "sk-pb-...xxxx" in _error(wrong)["message"]
    key = tenancy.create_key(tenant="acme", name="to revoke")
    assert tenancy.chat(key).status_code == 200
    key_id = tenancy.admin("GET", "/admin/keys", params={"tenant": "acme"}).json()["data"][-1]["id"]
    assert tenancy.admin("POST", f"/admin/keys/{key_id}/revoke").status_code == 200
    for base in tenancy.ingresses:  # the revocation reached every ingress
        assert tenancy.chat(key, base=base).status_code == 401


def test_a_request_failed_over_to_another_deployment_keeps_its_key(tenancy: Tenancy) -> None:
    """The worker that gives a request up re-queues it for another deployment with its
    signed tenancy: the next worker serves it in the key's name instead of refusing it
    as unauthenticated (the key itself is not in the re-queued message)."""
    key = tenancy.create_key(tenant="movers")
    answers = [tenancy.chat(key, f"move {i}", model="fragile-gpt") for i in range(8)]
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert all(a.headers["x-promptbus-deployment"] == "live-dep" for a in answers)
    moved = [a for a in answers if a.headers.get("x-promptbus-failover-from") == "dead-dep"]
    assert moved  # some were pulled by the dead deployment first


def test_rotation_keeps_the_key_and_retires_the_old_secret(tenancy: Tenancy) -> None:
    old = tenancy.create_key(tenant="rotors", name="rotating")
    listed = tenancy.admin("GET", "/admin/keys", params={"tenant": "rotors"}).json()["data"]
    assert len(listed) == 1 and "key" not in listed[0] and "digest" not in listed[0]
    assert listed[0]["hint"] == f"sk-pb-...{old[-4:]}"
    rotated = tenancy.admin("POST", f"/admin/keys/{listed[0]['id']}/rotate").json()
    assert rotated["id"] == listed[0]["id"] and rotated["key"] != old
    assert tenancy.chat(old).status_code == 401
    assert tenancy.chat(rotated["key"]).status_code == 200


def test_a_key_limited_to_some_models_gets_403_for_others(tenancy: Tenancy) -> None:
    key = tenancy.create_key(tenant="narrow", models=["mock-gpt"])
    assert tenancy.chat(key).status_code == 200
    refused = tenancy.chat(key, model="other-model")
    assert refused.status_code == 403
    assert _error(refused)["code"] == "model_not_allowed" and _error(refused)["param"] == "model"
    models = httpx.get(
        f"{tenancy.ingresses[1]}/v1/models", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert [m["id"] for m in models["data"]] == ["mock-gpt"]


def test_requests_per_minute_admit_exactly_n_across_three_ingresses(tenancy: Tenancy) -> None:
    limit = 12
    key = tenancy.create_key(tenant="metered-rpm", limits={"rpm": limit})
    with ThreadPoolExecutor(18) as pool:
        responses = list(pool.map(lambda _: tenancy.chat(key), range(3 * limit)))
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) == limit and len(limited) == 2 * limit, [r.status_code for r in responses]
    for response in limited:
        assert _error(response)["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-limit-requests"] == str(limit)
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-should-retry"] == "true"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok)
    assert remaining == list(range(limit))  # each admission took exactly one, 11 .. 0
    refused = 0.0
    for base in tenancy.ingresses:  # each ingress counts what it refused
        for line in httpx.get(f"{base}/metrics").text.splitlines():
            if line.startswith('promptbus_admission_refused_total{code="rate_limit_exceeded"}'):
                refused += float(line.split()[-1])
    assert refused >= 2 * limit


def test_tokens_per_minute_bucket(tenancy: Tenancy) -> None:
    key = tenancy.create_key(tenant="metered-tpm", limits={"tpm": 400})
    first = tenancy.chat(key, text="word " * 100)  # ~150 tokens estimated from the body
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "400"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 400
    statuses = [tenancy.chat(key, text="word " * 100).status_code for _ in range(4)]
    assert statuses.count(429) >= 1, statuses


def test_budget_warnings_fire_at_80_and_90_percent(tenancy: Tenancy) -> None:
    """Out of the box, with no rule configured: a key at 82% of its budget has a
    warning, one at 91% a critical alert too; one evaluator (of three ingresses) raises
    each once, and every ingress shows them."""
    # one "hello world" costs $7 (see below)
    warned = tenancy.create_key(tenant="warned", budgets=[{"max_usd": 8.5, "period": "daily"}])
    nearly = tenancy.create_key(tenant="nearly", budgets=[{"max_usd": 7.7, "period": "daily"}])
    assert tenancy.chat(warned).status_code == 200 and tenancy.chat(nearly).status_code == 200

    def alerts_of(tenant: str, base: str) -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{base}/admin/alerts", headers=ADMIN_HEADERS, timeout=10).json()
        return {a["rule"]: a for a in listed["data"] if a["labels"].get("tenant") == tenant}

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(alerts_of("nearly", tenancy.ingresses[0])) == 2 and alerts_of(
            "warned", tenancy.ingresses[0]
        ):
            break
        time.sleep(0.2)
    for base in tenancy.ingresses:
        warnings = alerts_of("warned", base)
        assert set(warnings) == {"budget-80"}, warnings
        alert = warnings["budget-80"]
        assert alert["status"] == "firing" and alert["severity"] == "warning"
        assert alert["value"] == pytest.approx(100 * 7 / 8.5)
        assert alert["labels"]["period"] == "daily" and alert["labels"]["owner"].startswith("key ")
        critical = alerts_of("nearly", base)
        assert set(critical) == {"budget-80", "budget-90"}
        assert critical["budget-90"]["severity"] == "critical"
    history = tenancy.admin("GET", "/admin/alerts/history").json()["data"]
    fired = [
        e
        for e in history
        if e["kind"] == "firing" and e["alert"]["labels"].get("tenant") == "nearly"
    ]
    assert sorted(e["alert"]["rule"] for e in fired) == ["budget-80", "budget-90"]


def test_budget_stops_spending_at_the_limit(tenancy: Tenancy) -> None:
    # mock-gpt costs $1 a token; "hello world" -> 2 prompt + 5 completion tokens = $7.
    key = tenancy.create_key(tenant="thrifty", budgets=[{"max_usd": 20, "period": "daily"}])
    statuses = [tenancy.chat(key).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]  # $0, $7, $14 < $20; then $21 spent
    refused = tenancy.chat(key)
    error = _error(refused)
    assert error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "limit $20.00, spent $21.00" in error["message"] and "resets at" in error["message"]
    assert refused.headers["x-should-retry"] == "false" and int(refused.headers["retry-after"]) > 0
    for _ in range(50):  # the per-day detail is recorded with the next batch (0.2 s)
        report = tenancy.admin("GET", "/admin/usage", params={"tenant": "thrifty"}).json()
        if report["cost_usd"] >= 21.0:
            break
        time.sleep(0.1)
    assert report["cost_usd"] == pytest.approx(21.0)
    (row,) = report["rows"]
    assert (row["model"], row["deployment"], row["requests"]) == ("mock-gpt", "mock-gpt/0", 3)
    assert row["prompt_tokens"] == 6 and row["completion_tokens"] == 15


async def _held(tenancy: Tenancy, scope: str, ident: str) -> int:
    """What admissions hold of a daily budget right now (its counter in NATS)."""
    config = load_config(tenancy.config)
    subjects = Subjects.of(config)
    subject = subjects.usage_hold(scope, ident, period_key("daily", time.time()), "cost")
    nc = await bus.connect(tenancy.nats_url)
    try:
        msg = await nc.jetstream().get_last_msg(subjects.usage_stream, subject, direct=True)
    except NotFoundError:
        return 0
    finally:
        await nc.close()
    return int(json.loads(msg.data)["val"])


async def _at_once(
    tenancy: Tenancy, key: str, body: dict[str, Any], count: int
) -> list[httpx.Response]:
    """``count`` chat requests sent together, spread over the three ingresses."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{tenancy.ingresses[i % 3]}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                for i in range(count)
            )
        )


async def test_two_hundred_concurrent_requests_cannot_bypass_a_budget(tenancy: Tenancy) -> None:
    """Each admission holds its estimate until a worker settles it, so requests in
    flight count against the budget: 200 at once over three ingresses, against a
    budget that fits 10 answers, spend no more than it (a gateway that checks only what
    was spent admits them all). Every hold is released once answered."""
    key = tenancy.create_key(tenant="crowd", budgets=[{"max_usd": 70, "period": "daily"}])
    body = {
        "model": "mock-gpt",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hello world"}],
    }
    responses = await _at_once(tenancy, key, body, 200)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses  # never a 5xx for contention
    admitted = statuses.count(200)
    assert 1 <= admitted <= 10, statuses  # each answer costs $7
    assert all(_error(r)["code"] == "budget_exceeded" for r in responses if r.status_code == 429)
    for _ in range(50):
        report = tenancy.admin("GET", "/admin/usage", params={"tenant": "crowd"}).json()
        if report["cost_usd"] >= 7.0 * admitted:
            break
        await asyncio.sleep(0.1)
    assert report["cost_usd"] == pytest.approx(7.0 * admitted) and report["cost_usd"] <= 70
    for _ in range(30):  # released with the usage; idle leases go back within 0.5 s
        if await _held(tenancy, "key", key_id(tenancy, key)) == 0:
            break
        await asyncio.sleep(0.1)
    assert await _held(tenancy, "key", key_id(tenancy, key)) == 0


async def test_a_hot_metered_key_is_never_refused_below_its_limits(tenancy: Tenancy) -> None:
    """300 requests at once of one key over three ingresses, with rpm, tpm and a budget
    on the key and its tenant far above the load: every one is answered (the shared
    state is written once per lease, so there is nothing to contend on)."""
    limits = {"rpm": 1_000_000, "tpm": 100_000_000}
    budgets = [{"max_usd": 1_000_000, "period": "daily"}]
    put = tenancy.admin("PUT", "/admin/tenants/busy", json={"limits": limits, "budgets": budgets})
    assert put.status_code == 200, put.text
    key = tenancy.create_key(tenant="busy", limits=limits, budgets=budgets)
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello world"}]}
    responses = await _at_once(tenancy, key, body, 300)
    assert [r.status_code for r in responses] == [200] * 300, {r.text for r in responses}


def key_id(tenancy: Tenancy, secret: str, tenant: str = "crowd") -> str:
    keys = tenancy.admin("GET", "/admin/keys", params={"tenant": tenant}).json()["data"]
    (record,) = keys
    return str(record["id"])


async def test_a_budget_with_room_is_settled_with_the_next_batch_and_still_exact(
    tenancy: Tenancy,
) -> None:
    """A budget with far more room than a request holds: its requests are settled with
    the usage batch (the reply does not wait for the counters). Each is still billed
    once, and every hold is released afterwards."""
    key = tenancy.create_key(tenant="roomy", budgets=[{"max_usd": 100_000, "period": "daily"}])
    answers = [tenancy.chat(key) for _ in range(12)]  # the first renews; the rest leased
    assert [r.status_code for r in answers] == [200] * 12, answers[-1].text
    for _ in range(50):
        report = tenancy.admin("GET", "/admin/usage", params={"tenant": "roomy"}).json()
        if report["cost_usd"] >= 7.0 * 12:
            break
        await asyncio.sleep(0.1)
    assert report["cost_usd"] == pytest.approx(7.0 * 12)  # each one $7, once
    ident = key_id(tenancy, key, tenant="roomy")
    for _ in range(30):  # released with the usage batch; the idle lease within 0.5 s
        if await _held(tenancy, "key", ident) == 0:
            break
        await asyncio.sleep(0.1)
    assert await _held(tenancy, "key", ident) == 0


def test_streams_are_metered_even_when_the_caller_skips_usage(tenancy: Tenancy) -> None:
    key = tenancy.create_key(tenant="streamer")
    body = {
        "model": "mock-gpt",
        "stream": True,
        "messages": [{"role": "user", "content": "hello world"}],
    }
    with httpx.stream(
        "POST",
        f"{tenancy.ingresses[2]}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=20,
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage":{' in event for event in events)  # not asked for, not sent
    for _ in range(50):  # unmetered usage is recorded in batches (every 0.2 s)
        rows = tenancy.admin("GET", "/admin/usage", params={"tenant": "streamer"}).json()["rows"]
        if rows:
            break
        time.sleep(0.1)
    (row,) = rows
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 5)  # yet recorded


def test_tenant_token_quota(tenancy: Tenancy) -> None:
    put = tenancy.admin(
        "PUT", "/admin/tenants/quota-co", json={"quota": {"tokens": 15, "period": "daily"}}
    )
    assert put.status_code == 200, put.text
    key = tenancy.create_key(tenant="quota-co")
    statuses = [tenancy.chat(key).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]  # 0, 7, 14 tokens used < 15; then 21
    error = _error(tenancy.chat(key))
    assert error["code"] == "quota_exceeded" and "21 of 15 tokens" in error["message"]
    tenants = {t["name"]: t for t in tenancy.admin("GET", "/admin/tenants").json()["data"]}
    assert tenants["quota-co"]["quota_used_tokens"] == 21


def test_tenant_limits_cover_all_of_its_keys(tenancy: Tenancy) -> None:
    tenancy.admin("PUT", "/admin/tenants/team", json={"limits": {"rpm": 4}})
    keys = [tenancy.create_key(tenant="team") for _ in range(2)]
    statuses = [tenancy.chat(keys[i % 2]).status_code for i in range(8)]
    assert statuses.count(200) == 4 and statuses.count(429) == 4, statuses


async def test_nats_callers_get_the_same_checks(tenancy: Tenancy) -> None:
    config = load_config(tenancy.config)
    key = tenancy.create_key(tenant="nats-side", limits={"rpm": 2})
    request = {"model": "mock-gpt", "messages": [{"role": "user", "content": "over nats"}]}
    # A broker-role connection without a key: the worker refuses the request.
    client = await BrokerClient.connect(config, tenancy.nats_url)
    try:
        for _ in range(50):  # until presence says the model is served
            if client.directory.is_served("mock-gpt"):
                break
            await asyncio.sleep(0.1)
        with pytest.raises(BrokerError) as err:
            await client.chat(request)
        assert err.value.status == 401 and err.value.detail.code == "invalid_api_key"
    finally:
        await client.close()
    # A wrong key does not even get onto the bus (the auth callout refuses the login).
    with pytest.raises(AuthenticationError):
        await BrokerClient.connect(config, tenancy.nats_url, api_key="sk-pb-nope")
    client = await BrokerClient.connect(config, tenancy.nats_url, api_key=key)
    try:
        for _ in range(50):
            if client.directory.is_served("mock-gpt"):
                break
            await asyncio.sleep(0.1)
        answers = [await client.chat(request) for _ in range(2)]
        assert answers[1].choices[0].message.content == "mock reply to: over nats"
        with pytest.raises(BrokerError) as err:
            await client.chat(request)
        assert err.value.status == 429 and err.value.detail.code == "rate_limit_exceeded"
    finally:
        await client.close()


async def test_keys_never_appear_in_clear(tenancy: Tenancy) -> None:
    key = tenancy.create_key(tenant="secretive", limits={"rpm": 1})
    assert tenancy.chat(key).status_code == 200
    assert tenancy.chat(key).status_code == 429  # an error path too
    nc = await bus.connect(tenancy.nats_url)
    try:
        kv = await nc.jetstream().key_value("tn_keys")
        for name in await kv.keys():
            entry = await kv.get(name)
            assert key.encode() not in (entry.value or b"")
            assert key[6:].encode() not in (entry.value or b"")
    finally:
        await nc.close()
    for log in tenancy.logs:
        text = log.read_text()
        assert key not in text and key[6:] not in text, log


def test_a_key_can_carry_its_own_transformations(tenancy: Tenancy) -> None:
    plain = tenancy.create_key(tenant="styled")
    short = tenancy.create_key(tenant="styled", transforms=["short"])
    answer = tenancy.chat(plain, text="one two three").json()
    assert answer["model"] == "mock-gpt"
    assert answer["choices"][0]["message"]["content"] == "mock reply to: one two three"
    shaped = tenancy.chat(short, text="one two three").json()
    assert shaped["model"] == "house"  # renamed for this key only
    assert shaped["choices"][0]["message"]["content"] == "mock reply"  # max_tokens forced to 2
    unknown = tenancy.admin("POST", "/admin/keys", json={"tenant": "styled", "transforms": ["x"]})
    assert unknown.status_code == 400 and _error(unknown)["code"] == "unknown_transform"


def test_cli_manages_keys_and_reports_usage(tenancy: Tenancy) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [*PROMPTBUS, *args, "-c", str(tenancy.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    created = cli("keys", "create", "--tenant", "cli-co", "--rpm", "100", "--budget", "5/daily")
    secret = created.split('"key": "', 1)[1].split('"', 1)[0]
    assert secret.startswith("sk-pb-") and "not shown again" in created
    assert tenancy.chat(secret).status_code == 200
    listed = cli("keys", "list", "--tenant", "cli-co")
    assert "tenant=cli-co" in listed and "active" in listed and secret not in listed
    cli("tenants", "set", "cli-co", "--quota", "1000/weekly")
    assert '"quota_used_tokens": 7' in cli("tenants", "list")
    report = cli("usage", "--tenant", "cli-co")
    assert "cli-co" in report and "mock-gpt/0" in report and "total cost: $7.000000" in report
    key_id = listed.split()[0]
    assert "revoked" in cli("keys", "revoke", key_id)
    assert tenancy.chat(secret).status_code == 401


def test_batches_run_in_the_name_of_their_key(tenancy: Tenancy) -> None:
    base = tenancy.ingresses[0]
    assert httpx.get(f"{base}/v1/batches", timeout=10).status_code == 401
    spec = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip
    assert httpx.post(f"{base}/v1/batches", json=spec, timeout=10).status_code == 401
    key = tenancy.create_key(tenant="batch-co", models=["mock-gpt"])
    lines = [
        {
            "custom_id": f"b{i}",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i, model in enumerate(["mock-gpt", "mock-gpt", "other-model"])
    ]
    batch, _, errors = _run_batch(tenancy, key, lines)
    assert batch["status"] == "completed", batch
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert [line["error"]["code"] for line in errors] == ["model_not_allowed"]
    other = {"Authorization": f"Bearer {tenancy.create_key(tenant='someone-else')}"}
    for path in (f"/v1/batches/{batch['id']}", f"/v1/files/{batch['error_file_id']}/content"):
        assert httpx.get(f"{base}{path}", headers=other, timeout=10).status_code == 404
    listed = httpx.get(f"{base}/v1/batches", headers=other, timeout=10).json()["data"]
    assert batch["id"] not in [b["id"] for b in listed]  # another tenant's batches are private
    for _ in range(100):  # usage is recorded in the background
        report = tenancy.admin("GET", "/admin/usage", params={"tenant": "batch-co"}).json()
        if report["rows"]:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert sum(row["requests"] for row in report["rows"]) == 2


def _run_batch(
    tenancy: Tenancy, key: str, lines: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Upload, create and wait for a batch: the batch and its output and error lines."""
    base, auth = tenancy.ingresses[0], {"Authorization": f"Bearer {key}"}
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = httpx.post(
        f"{base}/v1/files", files={"file": ("q.jsonl", data)}, data={"purpose": "batch"},
        headers=auth, timeout=10,
    )  # fmt: skip
    assert upload.status_code == 200, upload.text
    spec = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip
    batch = httpx.post(f"{base}/v1/batches", json=spec, headers=auth, timeout=10).json()
    for _ in range(600):
        batch = httpx.get(f"{base}/v1/batches/{batch['id']}", headers=auth, timeout=10).json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            break
        time.sleep(0.1)

    def lines_of(file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        content = httpx.get(f"{base}/v1/files/{file_id}/content", headers=auth, timeout=10)
        return [json.loads(line) for line in content.text.splitlines()]

    return batch, lines_of(batch["output_file_id"]), lines_of(batch["error_file_id"])


def test_a_tenant_quota_stops_a_running_batch_and_refuses_the_next(tenancy: Tenancy) -> None:
    """Batch lines are not rate-limited, but budgets and quotas hold: when the quota is
    used up the batcher withdraws the queued lines, and they and the lines never queued
    fail with quota_exceeded; what ran is in the output file. A batch created after
    that runs nothing."""
    put = tenancy.admin(
        "PUT", "/admin/tenants/bulk-quota", json={"quota": {"tokens": 40, "period": "daily"}}
    )
    assert put.status_code == 200, put.text
    key = tenancy.create_key(tenant="bulk-quota")
    ids = [f"q{i}" for i in range(60)]  # 6 s of work at 10 a second; ~6 tokens each
    lines = [
        {
            "custom_id": i,
            "body": {"model": "slow-gpt", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in ids
    ]
    batch, output, errors = _run_batch(tenancy, key, lines)
    assert batch["status"] == "completed", batch
    answered = {line["custom_id"] for line in output}
    refused = {line["custom_id"] for line in errors}
    assert answered | refused == set(ids) and not answered & refused
    assert 5 <= len(answered) <= 40 and len(refused) >= 20, (len(answered), len(refused))
    assert {line["error"]["code"] for line in errors} == {"quota_exceeded"}
    assert "token quota is used up" in errors[0]["error"]["message"]
    counts = batch["request_counts"]
    assert counts == {"total": 60, "completed": len(answered), "failed": len(refused)}

    again, output, errors = _run_batch(tenancy, key, lines[:5])
    assert again["request_counts"] == {"total": 5, "completed": 0, "failed": 5}, (
        again["status"],
        again["request_counts"],
        tenancy.logs[1].read_text()[-3000:],  # the batcher's
    )
    assert output == [] and {line["error"]["code"] for line in errors} == {"quota_exceeded"}


def test_cli_batches_and_chat_act_with_a_key(tenancy: Tenancy, tmp_path: Path) -> None:
    """With auth.required, `promptbus batch submit` and `promptbus chat` take --api-key
    (or $PROMPTBUS_API_KEY): lines run as the key's requests. Without a key the command
    fails at once, saying why, instead of a batch whose every line is a 401; a batch in
    which no line succeeded exits non-zero, and submitting again starts a new one."""
    key = tenancy.create_key(tenant="cli-batch")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            f'{{"custom_id": "p{i}", "messages": [{{"role": "user", "content": "n{i}"}}]}}\n'
            for i in range(5)
        )
    )
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PROMPTBUS_API_KEY"}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PROMPTBUS, *args, "-c", str(tenancy.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env | extra,
            cwd=tmp_path,  # no .promptbus/demo-key here
        )

    refused = cli("batch", "submit", str(prompts), "-m", "mock-gpt", "--wait")
    assert refused.returncode != 0 and "API key" in refused.stderr
    done = cli("batch", "submit", str(prompts), "-m", "mock-gpt", "-o", str(out), "--api-key", key)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"p{i}" for i in range(5)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    chat = cli("chat", "hello", "-m", "mock-gpt", PROMPTBUS_API_KEY=key)
    assert chat.returncode == 0 and "mock reply to: hello" in chat.stdout

    bad = tmp_path / "bad.jsonl"  # every line names a model the broker does not have
    bad.write_text('{"custom_id": "x", "messages": [{"role": "user", "content": "x"}]}\n')
    failed = cli("batch", "submit", str(bad), "-m", "no-such-model", "--wait", "--api-key", key)
    assert failed.returncode != 0 and "no line succeeded" in failed.stderr
    again = cli("batch", "submit", str(bad), "-m", "no-such-model", "--api-key", key)
    assert "resuming" not in again.stderr
