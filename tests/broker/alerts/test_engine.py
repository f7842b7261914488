"""The alert evaluator against a real nats-server and real webhook receivers: a rule's
alert goes pending, fires, is acknowledged and resolves, each step kept in the history
and notified (generic JSON and Slack, retried); one evaluator at a time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError
from prometheus_client import REGISTRY

from broker.alerts.engine import AlertEngine
from broker.nats.credentials import Role
from broker.nats.provision import StreamKind, ensure_bucket, ensure_stream
from broker.nats.subjects import ALERTS, Subjects
from broker.telemetry.counts import INGRESS, WORKER, Telemetry
from broker.telemetry.reporter import TelemetryReporter
from broker.telemetry.series import SLOT_S, Series
from schemas.config import Config
from tests import bus
from tests.fakes.webhook import WebhookReceiver


def _config(**alerts: Any) -> Config:
    return msgspec.convert(
        {
            "nats": {"subject_prefix": "al", "stream": "AL_REQ"},
            "model_list": [{"model_name": "gpt", "deployments": [{"provider": "mock"}]}],
            "alerts": {"budget_warnings": [], "notify_max_backoff_s": 0.2, **alerts},
        },
        Config,
    )


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await bus.connect(nats_url, Role.INGRESS)
    js = nc.jetstream()
    config = _config()
    subjects = Subjects.of(config)
    for kind in (StreamKind.ALERTS, StreamKind.TELEMETRY):
        await ensure_stream(js, config, subjects, kind)
        await js.purge_stream(
            subjects.alerts_stream if kind is StreamKind.ALERTS else subjects.telemetry_stream
        )
    kv = await ensure_bucket(js, config, ALERTS)
    with contextlib.suppress(NoKeysError):
        for key in await kv.keys():
            await kv.purge(key)
    yield js
    await nc.close()


async def _reported(
    js: JetStreamContext, config: Config, telemetry: Telemetry, at: float
) -> Series:
    """A series that followed the stream until the report published at ``at`` arrived."""
    subjects = Subjects.of(config)
    reporter = TelemetryReporter(js, subjects, "test-process", telemetry, 5.0)
    await reporter.report(at=at)
    series = Series()
    await series.follow(js, subjects)
    async with asyncio.timeout(10):
        while not series.window(at - 1, at + 1):  # noqa: ASYNC110 (polls a follower)
            await asyncio.sleep(0.05)
    return series


async def test_a_rule_is_pending_then_fires_is_acknowledged_and_resolves(
    js: JetStreamContext,
) -> None:
    plain = await WebhookReceiver().start()
    slack = await WebhookReceiver(failures=2).start()  # answers 503 twice: retried
    config = _config(
        rules=[
            {
                "name": "slow",
                "metric": "latency_p95_ms",
                "op": ">",
                "threshold": 200,
                "for": "20s",
                "window": "1m",
                "group_by": ["model"],
                "severity": "critical",
                "description": "callers wait",
            }
        ],
        webhooks=[
            {"name": "ops", "url": f"{plain.url}/hook"},
            {"name": "chat", "url": f"{slack.url}/slack", "format": "slack"},
        ],
        repeat_s=30,
    )
    telemetry = Telemetry()
    for _ in range(40):
        telemetry.observe(INGRESS, "gpt", "", "acme", 200, 0.400)  # 400 ms: too slow
        telemetry.observe(INGRESS, "fast", "", "acme", 200, 0.005)
    t0 = (time.time() // SLOT_S) * SLOT_S + 1  # a slot's start: windows below know it
    series = await _reported(js, config, telemetry, t0)
    kv = await ensure_bucket(js, config, ALERTS)
    engine = AlertEngine(js, kv, config, series)
    engine.notifier.start()
    try:
        await engine.round(t0)
        [(pending, _)] = (await engine.store.active()).values()
        assert pending.status == "pending" and pending.labels == {"model": "gpt"}
        assert pending.value is not None and pending.value > 200
        assert not plain.received  # pending is not notified

        await engine.round(t0 + 25)  # held past `for`: fires
        [(path, body)] = await plain.wait_for(1)
        assert path == "/hook" and body["kind"] == "firing"
        assert (
            body["alert"]["labels"] == {"model": "gpt"} and body["alert"]["severity"] == "critical"
        )
        assert "slow: latency_p95_ms" in body["alert"]["summary"]
        [(_, message)] = await slack.wait_for(1)
        assert "*FIRING*" in message["text"] and "callers wait" in message["text"]
        assert slack.attempts == 3

        await engine.round(t0 + 58)  # nobody acknowledged it for repeat_s: reminded
        assert [b["kind"] for _, b in await plain.wait_for(2)] == ["firing", "firing"]
        acked = await engine.store.ack(pending.id, "alice")
        assert acked.acked_by == "alice"
        await engine.round(t0 + 65)  # still firing; the acknowledgement is kept
        [(firing, _)] = (await engine.store.active()).values()
        assert firing.status == "firing" and firing.acked_by == "alice"
        shown = {"rule": "slow", "severity": "critical", "status": "firing"}
        assert REGISTRY.get_sample_value("promptbus_alerts", shown) == 1
        sent = {"webhook": "chat", "outcome": "sent"}
        assert REGISTRY.get_sample_value("promptbus_alert_notifications_total", sent) == 2

        await engine.round(t0 + 130)  # the slow minute is out of the window: resolved
        kinds = [b["kind"] for _, b in await plain.wait_for(3)]
        assert kinds == ["firing", "firing", "resolved"]
        assert not await engine.store.active()
        assert REGISTRY.get_sample_value("promptbus_alerts", shown) == 0
        history = [e.kind for e in await engine.store.history()]
        assert history == ["pending", "firing", "firing", "acknowledged", "resolved"]
    finally:
        await engine.notifier.stop()
        await series.stop()
        await plain.stop()
        await slack.stop()


async def test_deployment_rules_read_what_workers_served(js: JetStreamContext) -> None:
    """Grouped by deployment, the error rate is the workers' (a deployment failing
    while another serves); a 4xx webhook answer is not retried."""
    refusing = await WebhookReceiver(failures=10, status=400).start()
    config = _config(
        rules=[
            {
                "name": "failing",
                "metric": "5xx_rate",
                "op": ">=",
                "threshold": 0.5,
                "group_by": ["deployment"],
            }
        ],
        webhooks=[{"name": "broken", "url": refusing.url}],
    )
    telemetry = Telemetry()
    for _ in range(10):
        telemetry.observe(WORKER, "gpt", "dep-a", "", 502, 0.01)
        telemetry.observe(WORKER, "gpt", "dep-b", "", 200, 0.01)
        telemetry.observe(INGRESS, "gpt", "", "", 200, 0.02)  # failover hid it from callers
    now = time.time()
    series = await _reported(js, config, telemetry, now)
    engine = AlertEngine(js, await ensure_bucket(js, config, ALERTS), config, series)
    engine.notifier.start()
    try:
        await engine.round(now)
        [(alert, _)] = (await engine.store.active()).values()
        assert alert.status == "firing" and alert.labels == {"deployment": "dep-a"}
        assert alert.value == 1.0
        async with asyncio.timeout(10):
            while refusing.attempts < 1:  # noqa: ASYNC110 (polls a server)
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert refusing.attempts == 1 and engine.notifier.sent == 0
    finally:
        await engine.notifier.stop()
        await series.stop()
        await refusing.stop()


async def test_one_evaluator_at_a_time(js: JetStreamContext) -> None:
    config = _config()
    kv = await ensure_bucket(js, config, ALERTS)
    first, second = (AlertEngine(js, kv, config, Series()) for _ in range(2))
    try:
        assert await first.evaluate()
        assert not await second.evaluate()
        await first.stop()  # gives the lease back
        assert await second.evaluate()
    finally:
        await second.stop()
