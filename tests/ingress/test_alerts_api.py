"""Alert rules through the admin API and ``promptbus alerts`` against a worker and an
ingress: a rule added at run time fires on real traffic (the openai SDK's), is
acknowledged from the CLI and resolves when deleted; every bad input is a 4xx naming
what is wrong."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from broker.nats.embedded import free_port
from tests import bus
from tests.procs import PROMPTBUS, Proc, eventually, wait_http

ADMIN = "alerts-admin-secret"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


class Env:
    def __init__(self, base: str, config: Path) -> None:
        self.base, self.config = base, config
        self.http = httpx.Client(base_url=base, headers=HEADERS, timeout=10)

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*PROMPTBUS, "alerts", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("alerts")
    config = work / "promptbus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "url": nats_url,
                    "subject_prefix": "aa",
                    "stream": "AA_REQ",
                    **bus.config_section(),
                },
                "telemetry": {"report_every_s": 1},
                "alerts": {"evaluate_every_s": 1},
                "model_list": [
                    {"model_name": "watched-gpt", "deployments": [{"provider": "mock"}]}
                ],
            }
        )
    )
    port = free_port()
    procs = [Proc([*PROMPTBUS, "worker", "-c", str(config)], work / "worker.log")]
    try:
        args = [*PROMPTBUS, "ingress", "-c", str(config), "--port", str(port)]
        procs.append(Proc(args, work / "ingress.log", {"PROMPTBUS_ADMIN_KEY": ADMIN}))
        wait_http(f"http://127.0.0.1:{port}/readyz", procs[1])
        yield Env(f"http://127.0.0.1:{port}", config)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_rule_added_at_run_time_fires_is_acknowledged_and_resolves(env: Env) -> None:
    rule = {
        "metric": "requests_per_s",
        "op": ">",
        "threshold": 0,
        "labels": {"model": "watched-gpt"},
    }
    added = env.http.put("/admin/alerts/rules/busy", json=rule | {"severity": "warning"})
    assert added.status_code == 200 and added.json()["source"] == "runtime"
    rules = {r["name"]: r["source"] for r in env.http.get("/admin/alerts/rules").json()["data"]}
    assert rules == {"budget-80": "builtin", "budget-90": "builtin", "busy": "runtime"}
    assert "busy" in env.cli("rules") and "runtime" in env.cli("rules")

    client = openai.OpenAI(base_url=f"{env.base}/v1", api_key="unused", max_retries=0)

    def firing() -> list[dict[str, Any]]:
        try:
            client.chat.completions.create(
                model="watched-gpt", messages=[{"role": "user", "content": "hi"}]
            )
        except openai.APIStatusError:
            pass  # the worker is not serving yet
        listed = env.http.get("/admin/alerts", params={"status": "firing"}).json()["data"]
        return [a for a in listed if a["rule"] == "busy"]

    [alert] = eventually(firing, "the busy alert fires", timeout=30)
    assert (
        alert["labels"] == {"model": "watched-gpt"}
        and alert["value"] > 0
        and alert["severity"] == "warning"
    )
    # Traffic goes on until the rule is deleted, so nothing but the deletion resolves it.
    stop = threading.Event()
    traffic = threading.Thread(target=lambda: [firing() for _ in iter(stop.is_set, True)])
    traffic.start()
    try:
        assert alert["id"] in env.cli("list")
        assert "acknowledged by bob" in env.cli("ack", alert["id"], "--by", "bob")
        listed = env.http.get("/admin/alerts").json()["data"]
        [acked] = [a for a in listed if a["id"] == alert["id"]]
        assert acked["acked_by"] == "bob" and acked["status"] == "firing"
        assert env.http.delete("/admin/alerts/rules/busy").status_code == 200
    finally:
        stop.set()
        traffic.join()

    def resolved() -> list[str]:
        events = env.http.get("/admin/alerts/history").json()["data"]
        kinds = [e["kind"] for e in events if e["alert"]["id"] == alert["id"]]
        return kinds if "resolved" in kinds else []

    kinds = eventually(resolved, "the alert resolves once its rule is gone", timeout=15)
    assert kinds[:2] == ["pending", "firing"] and kinds[-2:] == ["acknowledged", "resolved"]
    assert "resolved" in env.cli("history")


def test_bad_input_is_a_4xx_naming_it(env: Env) -> None:
    bad_rules = [
        ({"metric": "nope", "op": ">", "threshold": 1}, "metric"),
        ({"metric": "error_rate", "op": "~", "threshold": 1}, "op"),
        ({"metric": "error_rate", "op": ">", "threshold": "high"}, "threshold"),
        ({"metric": "error_rate", "op": ">", "threshold": 1, "window": "2h"}, None),
        ({"metric": "error_rate", "op": ">", "threshold": 1, "for": "soon"}, None),
        ({"metric": "error_rate", "op": ">", "threshold": 1, "labels": {"colour": "x"}}, "labels"),
    ]
    for body, param in bad_rules:
        error = _error(env.http.put("/admin/alerts/rules/bad", json=body), 400)
        if param is not None:
            assert param in (error["param"] or ""), error
    _error(env.http.put("/admin/alerts/rules/bad%20name", json=bad_rules[0][0]), 400)
    _error(env.http.put("/admin/alerts/rules/x", content=b"[" * 100_000), 400)
    assert _error(env.http.post("/admin/alerts/nope.123/ack"), 404)["code"] == "alert_not_found"
    _error(env.http.post("/admin/alerts/..%2F..%2Fkeys/ack"), 404)
    _error(env.http.post("/admin/alerts/nope.123/ack", content=b'{"by": 5}'), 400)
    assert _error(env.http.delete("/admin/alerts/rules/never"), 404)["code"] == "rule_not_found"
    assert _error(env.http.get("/admin/series", params={"by": "colour"}), 400)["param"] == "by"
    for minutes in ("nan", "0", "1e9", "x"):
        assert (
            _error(env.http.get("/admin/series", params={"minutes": minutes}), 400)["param"]
            == "minutes"
        )
    _error(env.http.get("/admin/alerts", params={"status": "sleeping"}), 400)
    _error(httpx.get(f"{env.base}/admin/alerts"), 401)
    series = env.http.get("/admin/series", params={"minutes": 5, "step": 60}).json()
    assert series["step_s"] == 60 and len(series["times"]) == 5
