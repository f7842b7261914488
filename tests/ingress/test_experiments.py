"""Traffic splits and canaries through the ingress (broker/experiments/, the admin API,
``promptbus experiments``), with the openai SDK as the client.

One worker and two ingresses; every variant's counts land in NATS from both, so the
admin API of either and the CLI report the same.
"""

from __future__ import annotations

import collections
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from broker.nats.embedded import free_port
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http

ADMIN = "experiments-admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Stack:
    def __init__(self, bases: list[str], config: Path, nats_url: str) -> None:
        self.bases, self.config, self.nats_url = bases, config, nats_url
        self.clients = [  # no retries: each answer is the variant that gave it
            openai.OpenAI(base_url=f"{b}/v1", api_key="unused", max_retries=0) for b in bases
        ]

    def admin(self, path: str, method: str = "GET", **kwargs: Any) -> Any:
        response = httpx.request(
            method, f"{self.bases[0]}{path}", headers=ADMIN_HEADERS, timeout=10, **kwargs
        )
        assert response.status_code == 200, response.text
        return response.json()

    def ask(self, model: str, user: str | None = None, client: int = 0) -> tuple[int, str]:
        """(status, variant) of one chat request, errors included."""
        extra: dict[str, Any] = {"user": user} if user else {}
        raw = self.clients[client].chat.completions.with_raw_response
        try:
            response = raw.create(
                model=model, messages=[{"role": "user", "content": "hi"}], **extra
            )
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("x-promptbus-variant", "")
        response.parse()  # a valid chat.completion
        return response.http_response.status_code, response.headers.get("x-promptbus-variant", "")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("experiments")
    config = work / "promptbus.yaml"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "ex",
                    "stream": "EX_REQ",
                    **bus.config_section(),
                },
                "worker": {"heartbeat_s": 0.5, "presence_ttl_s": 3},
                "model_list": [
                    {"model_name": "base-gpt", "deployments": [{"provider": "mock"}]},
                    {"model_name": "trial-gpt", "deployments": [{"provider": "mock"}]},
                    {
                        "model_name": "broken-gpt",
                        "deployments": [
                            {
                                "provider": "openai",
                                "name": "broken-dep",
                                "base_url": dead,
                                "retry": {"max_attempts": 1},
                                "breaker": {"failure_threshold": 1000, "min_requests": 1000},
                            }
                        ],
                    },
                ],
                "experiments": [
                    {
                        "name": "mix",
                        "model": "mix-chat",
                        "variants": {"base-gpt": 50, "trial-gpt": 50},
                        "sticky": "user",
                    },
                    {
                        "name": "doomed",
                        "model": "doomed-chat",
                        "variants": {"base-gpt": 1, "broken-gpt": 1},
                        "canary": {
                            "variant": "broken-gpt",
                            "steps": [50, 100],
                            "step_s": 3600,
                            "check_s": 0.3,
                            "min_requests": 5,
                        },
                    },
                    {
                        "name": "stepper",
                        "model": "stepper-chat",
                        "variants": {"base-gpt": 1, "trial-gpt": 1},
                        "canary": {
                            "variant": "trial-gpt",
                            "steps": [10, 60, 100],
                            "step_s": 1.0,
                            "check_s": 0.3,
                        },
                    },
                ],
            }
        )
    )
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    ports = [free_port() for _ in range(2)]
    try:
        for i, port in enumerate(ports):
            args = [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)]
            procs.append(Proc(args, work / f"ingress{i}.log", {"PROMPTBUS_ADMIN_KEY": ADMIN}))
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        for base, proc in zip(bases, procs[1:], strict=True):
            wait_http(f"{base}/readyz", proc)
        result = Stack(bases, config, nats_url)
        for _ in range(100):
            if result.ask("base-gpt")[0] == 200 and result.ask("trial-gpt")[0] == 200:
                break
            time.sleep(0.1)
        yield result
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_a_sticky_split_keeps_each_user_on_one_variant_across_ingresses(stack: Stack) -> None:
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for i in range(40):
        for client in (0, 1):
            status, variant = stack.ask("mix-chat", user=f"user-{i}", client=client)
            assert status == 200
            seen[f"user-{i}"].add(variant)
    assert all(len(variants) == 1 for variants in seen.values())  # sticky, on both ingresses
    split = collections.Counter(next(iter(v)) for v in seen.values())
    assert set(split) == {"base-gpt", "trial-gpt"}, split  # 40 users: both variants used
    assert "mix-chat" in {m.id for m in stack.clients[0].models.list()}

    for _ in range(100):  # the other ingress's counts come with its next usage flush
        view = stack.admin("/admin/experiments/mix")
        reports = {r["variant"]: r for r in view["report"]}
        if sum(r["requests"] for r in reports.values()) == 80:
            break
        time.sleep(0.1)
    assert view["shares"] == {"base-gpt": 50, "trial-gpt": 50}
    assert {v: r["requests"] for v, r in reports.items()} == {
        v: 2 * n for v, n in split.items()
    }  # every request of both ingresses, under the variant that served it
    for _ in range(100):  # spend records are stored with each process's usage flush
        logged = stack.admin("/admin/requests?model=trial-gpt&limit=1000")["data"]
        mixed = [r for r in logged if r.get("experiment") == "mix"]
        if len(mixed) >= 2 * split["trial-gpt"]:
            break
        time.sleep(0.1)
    assert len(mixed) == 2 * split["trial-gpt"]  # the spend log names the experiment too
    assert all(r["errors"] == 0 and r["p95_ms"] is not None for r in reports.values())


def test_a_failing_canary_rolls_back_by_itself(stack: Stack) -> None:
    """broken-gpt gets half of doomed-chat's traffic and fails it; after 5 failures the
    judge rolls it back, and every request then goes to the baseline."""
    deadline = time.monotonic() + 30
    statuses: list[tuple[int, str]] = []
    while time.monotonic() < deadline:
        statuses.append(stack.ask("doomed-chat"))
        shares = stack.admin("/admin/experiments")["data"]
        doomed = next(e for e in shares if e["name"] == "doomed")
        if doomed["shares"]["broken-gpt"] == 0 and doomed["canary"]:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"never rolled back: {statuses[-10:]}")
    assert any(s >= 500 and v == "broken-gpt" for s, v in statuses)
    state = doomed["canary"]
    assert [e["kind"] for e in state["events"]] == ["started", "rolled_back"]
    assert "error rate" in state["reason"]
    time.sleep(0.5)  # the other ingress follows the state too
    after = [stack.ask("doomed-chat", client=i % 2) for i in range(10)]
    assert after == [(200, "base-gpt")] * 10

    shown = subprocess.run(
        [*PROMPTBUS, "experiments", "report", "doomed", "-c", str(stack.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    broken = next(line for line in lines if line.startswith("broken-gpt"))
    assert "100.0%" in broken and broken.split()[1] == "0%"  # all its requests failed
    assert any("rolled_back" in line and "error rate" in line for line in lines)


def test_a_healthy_canary_steps_up_to_completion(stack: Stack) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stack.ask("stepper-chat")
        state = stack.admin("/admin/experiments/stepper")["canary"]
        if state and state.get("completed_at"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the canary never completed")
    events = [(e["kind"], e["share"]) for e in state["events"]]
    assert events == [("started", 10), ("step", 60), ("step", 100), ("completed", 100)]
    assert stack.ask("stepper-chat") == (200, "trial-gpt")  # 100%: all traffic on it


def test_an_operator_rolls_a_canary_back(stack: Stack) -> None:
    response = httpx.post(
        f"{stack.bases[1]}/admin/experiments/mix/rollback", headers=ADMIN_HEADERS, timeout=10
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_a_canary"
    missing = httpx.get(f"{stack.bases[0]}/admin/experiments/nope", headers=ADMIN_HEADERS)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
    state = stack.admin(
        "/admin/experiments/stepper/rollback", "POST", json={"reason": "cost too high"}
    )
    assert state["reason"] == "cost too high" and state["events"][-1]["share"] == 0
    assert stack.ask("stepper-chat", client=0) == (200, "base-gpt")  # at once, here
