"""Tenant -> team -> key, and the end user (issue 19): each level's limits, budgets and
models are checked together, the error names the level that refused, and usage is
reported by team and by end user. One worker, one ingress, the CLI for teams."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker.nats.embedded import free_port
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http

ADMIN = "hierarchy-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Stack:
    def __init__(self, base: str, config: Path) -> None:
        self.base, self.config = base, config

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}{path}", headers=ADMIN_HEADERS, timeout=10, **kwargs
        )

    def key(self, tenant: str, **spec: Any) -> str:
        response = self.admin("POST", "/admin/keys", json={"tenant": tenant, **spec})
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def chat(
        self, key: str, model: str = "cheap-gpt", user: str | None = None, **headers: str
    ) -> httpx.Response:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if user is not None:
            body["user"] = user
        return httpx.post(
            f"{self.base}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}", **headers},
            timeout=20,
        )

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*PROMPTBUS, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("hierarchy")
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "hy",
                    "stream": "HY_REQ",
                    **bus.config_section(),
                },
                "auth": {"required": True},
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {"model_name": "cheap-gpt", "deployments": [{"provider": "mock"}]},
                    {"model_name": "other-gpt", "deployments": [{"provider": "mock"}]},
                    {
                        "model_name": "dear-gpt",  # $1 a token: one request spends dollars
                        "deployments": [
                            {
                                "provider": "mock",
                                "input_cost_per_mtok": 1_000_000,
                                "output_cost_per_mtok": 1_000_000,
                            }
                        ],
                    },
                ],
            }
        )
    )
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    port = free_port()
    try:
        procs.append(
            Proc(
                [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)],
                work / "ingress.log",
                {"PROMPTBUS_ADMIN_KEY": ADMIN},
            )
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/readyz", procs[1])
        result = Stack(base, config)
        probe = result.key("probe")
        for _ in range(100):
            if result.chat(probe).status_code == 200:
                break
            time.sleep(0.1)
        yield result
    finally:
        for proc in reversed(procs):
            proc.stop()


def _error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_team_limit_holds_across_its_keys_and_names_the_team(stack: Stack) -> None:
    stack.cli("teams", "set", "acme", "ml", "--rpm", "3", "--model", "cheap-gpt")
    listed = stack.cli("teams", "list", "--tenant", "acme")
    assert "acme/ml" in listed and "rpm=3" in listed
    created = stack.cli("keys", "create", "--tenant", "acme", "--team", "ml")
    first = next(line.split('"')[3] for line in created.splitlines() if '"key":' in line)
    second = stack.key("acme", team="ml")
    outsider = stack.key("acme")  # no team: the team's limit is not its
    codes = [stack.chat(k).status_code for k in (first, second, first)]
    assert codes == [200, 200, 200]
    refused = stack.chat(second)
    assert refused.status_code == 429
    assert "team acme/ml" in _error(refused)["message"]
    assert _error(refused)["code"] == "rate_limit_exceeded"
    assert stack.chat(outsider).status_code == 200

    other = stack.chat(outsider, model="other-gpt")
    assert other.status_code == 200
    barred = stack.chat(first, model="other-gpt")  # the team allows cheap-gpt only
    assert barred.status_code == 403
    assert "team acme/ml" in _error(barred)["message"] and _error(barred)["param"] == "model"


def test_a_key_names_a_team_of_its_tenant_or_is_refused(stack: Stack) -> None:
    response = stack.admin("POST", "/admin/keys", json={"tenant": "acme", "team": "nope"})
    assert response.status_code == 400
    assert _error(response)["code"] == "unknown_team" and _error(response)["param"] == "team"


def test_each_end_user_has_its_own_budget_and_the_error_names_them(stack: Stack) -> None:
    """The tenant gives every end user $5 a day: alice spends hers, bob still has his."""
    response = stack.admin(
        "PUT",
        "/admin/tenants/shop",
        json={"end_users": {"budgets": [{"max_usd": 5, "period": "daily"}], "limits": {}}},
    )
    assert response.status_code == 200, response.text
    key = stack.key("shop")
    assert stack.chat(key, "dear-gpt", user="alice").status_code == 200  # spends > $5
    refused = stack.chat(key, "dear-gpt", user="alice")
    assert refused.status_code == 429, refused.text
    error = _error(refused)
    assert error["code"] == "budget_exceeded" and "end user alice" in error["message"]
    assert stack.chat(key, "dear-gpt", user="bob").status_code == 200
    header = stack.chat(key, "dear-gpt", **{"x-promptbus-user": "alice"})
    assert header.status_code == 429  # the header names the end user too


def test_an_end_user_rate_limit_and_usage_by_user_and_team(stack: Stack) -> None:
    stack.admin("PUT", "/admin/tenants/chatty", json={"end_users": {"limits": {"rpm": 2}}})
    key = stack.key("chatty")
    codes = [stack.chat(key, user="carol").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert stack.chat(key, user="dave").status_code == 200

    deadline = time.monotonic() + 10
    while True:  # usage is recorded with the worker's next batch
        by_user = stack.admin("GET", "/admin/usage?by=user&tenant=chatty").json()
        rows = {row["user"]: row["requests"] for row in by_user["rows"]}
        if rows == {"carol": 2, "dave": 1} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == {"carol": 2, "dave": 1}
    by_team = stack.admin("GET", "/admin/usage?by=team&tenant=acme").json()
    teams = {row["team"]: row["requests"] for row in by_team["rows"]}
    assert teams.get("ml", 0) >= 3  # the team's keys' requests, summed
    shown = stack.cli("usage", "--tenant", "chatty", "--by", "user")
    assert "carol" in shown and "dave" in shown


def test_the_spend_log_has_one_record_per_request_and_no_prompt_or_key(stack: Stack) -> None:
    """issue 18's spend logs: who, which model and deployment, tokens, cost, latency,
    status, cache hit; paged, filtered, exported; never the prompt or the key."""
    key = stack.key("ledger")
    marker = "PROMPT-MARKER-7c1f"
    body = {
        "model": "dear-gpt",
        "temperature": 0,
        "user": "erin",
        "messages": [{"role": "user", "content": marker}],
    }
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):  # the second from the cache
        sent = httpx.post(f"{stack.base}/v1/chat/completions", json=body, headers=headers)
        assert sent.status_code == 200, sent.text
    assert sent.headers["x-promptbus-cache"] == "hit"
    assert stack.chat(key, "cheap-gpt").status_code == 200

    deadline = time.monotonic() + 10
    while True:  # records come with the next usage batch
        listed = stack.admin("GET", "/admin/requests?tenant=ledger").json()
        if len(listed["data"]) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows = listed["data"]  # in the order they were stored (the cache hit by the ingress)
    assert listed["next_cursor"] is None and len(rows) == 3
    cached = next(r for r in rows if r.get("cache_hit"))
    cheap = next(r for r in rows if r["model"] == "cheap-gpt")
    first = next(r for r in rows if r is not cached and r is not cheap)
    assert first["model"] == "dear-gpt" and first["deployment"] == "dear-gpt/0"
    assert first["user"] == "erin" and first["status"] == 200 and not first.get("cache_hit")
    assert first["prompt_tokens"] > 0 and first["cost_usd"] > 0 and first["latency_ms"] > 0
    assert cached["cache_hit"] is True and cached["user"] == "erin"
    assert cached.get("cost_usd", 0) == 0 and cached["request_id"] != first["request_id"]
    assert cheap["model"] == "cheap-gpt" and cheap["key_id"] == first["key_id"]

    ids = [r["request_id"] for r in rows]
    page = stack.admin("GET", "/admin/requests?tenant=ledger&limit=1").json()
    shown = [r["request_id"] for r in page["data"]]  # one stored batch: 1 record or more
    if len(shown) < 3:
        rest = stack.admin("GET", f"/admin/requests?tenant=ledger&cursor={page['next_cursor']}")
        shown += [r["request_id"] for r in rest.json()["data"]]
    assert shown == ids  # the pages, joined, are the listing
    by_model = stack.admin("GET", "/admin/requests?tenant=ledger&model=cheap-gpt").json()
    assert [r["request_id"] for r in by_model["data"]] == [cheap["request_id"]]

    csv_text = stack.admin("GET", "/admin/requests?tenant=ledger&format=csv").text
    assert csv_text.splitlines()[0].startswith("at,request_id,tenant,key_id,model")
    assert len(csv_text.splitlines()) == 4
    exported = stack.cli("usage", "--requests", "--tenant", "ledger", "--format", "jsonl")
    assert len(exported.splitlines()) == 3
    for text in (csv_text, exported, stack.cli("usage", "--requests", "--tenant", "ledger")):
        assert marker not in text and key not in text and key[6:] not in text

    bad = stack.admin("GET", "/admin/requests?since=yesterday")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_a_forecast_projects_this_months_spend_beside_the_budget(stack: Stack) -> None:
    """After the spend-log test, tenant ledger has spent this month; the forecast says so
    per tenant and key, projected to the month's end."""
    stack.admin(
        "PUT", "/admin/tenants/ledger", json={"budgets": [{"max_usd": 1, "period": "monthly"}]}
    )
    rows = stack.admin("GET", "/admin/forecast?tenant=ledger").json()["data"]
    tenant = next(r for r in rows if r["scope"] == "tenant")
    assert tenant["name"] == "ledger" and tenant["month_to_date_usd"] > 1  # dear-gpt: $1/token
    assert tenant["projected_usd"] >= tenant["month_to_date_usd"]
    assert tenant["budget_usd"] == 1 and tenant["budget_spent_on"] is not None  # spent already
    assert any(r["scope"] == "key" and r["tenant"] == "ledger" for r in rows)
    shown = stack.cli("usage", "--forecast", "--tenant", "ledger")
    assert "ledger" in shown and "projected" in shown
