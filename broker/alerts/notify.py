"""Alert notifications to webhooks: a generic JSON body (the alert event) or a Slack
incoming-webhook message. Sent from a queue by one task, retried with exponential
backoff (tenacity); the evaluator only enqueues, so a slow receiver delays nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import aiohttp
import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from broker.nats.tasks import cancel_and_wait
from broker.observability import metrics
from schemas.alerts import SEVERITIES, AlertEvent
from schemas.config import AlertsConfig, WebhookConfig

log = logging.getLogger(__name__)

QUEUE_LIMIT = 10_000  # events waiting to be sent; more are dropped, and logged
_SLACK_ICON = {
    "pending": ":hourglass:",
    "firing": ":rotating_light:",
    "resolved": ":white_check_mark:",
    "acknowledged": ":eyes:",
}


class Undelivered(Exception):
    """A webhook answered 429 or 5xx: retried."""


class Refused(Exception):
    """A webhook answered another 4xx: the same body would be refused again."""


def slack_body(event: AlertEvent) -> dict[str, Any]:
    alert = event.alert
    icon = _SLACK_ICON.get(event.kind, "")
    text = f"{icon} *{event.kind.upper()}* [{alert.severity}] {alert.summary}"
    if alert.description:
        text += f"\n{alert.description}"
    return {"text": text}


def json_body(event: AlertEvent) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(event)
    body["alert"]["summary"] = event.alert.summary
    return body


class Notifier:
    """Sends each event to every webhook whose ``min_severity`` it reaches."""

    def __init__(self, config: AlertsConfig, session: aiohttp.ClientSession | None = None) -> None:
        self._config = config
        self._hooks = [(hook, _url(hook)) for hook in config.webhooks]
        self._queue: asyncio.Queue[tuple[WebhookConfig, str, AlertEvent]] = asyncio.Queue(
            QUEUE_LIMIT
        )
        self._session, self._owns_session = session, session is None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # deliveries that succeeded (for tests and logs)

    def start(self) -> None:
        if self._hooks:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._session is not None and self._owns_session:
            await self._session.close()

    def notify(self, event: AlertEvent) -> None:
        rank = SEVERITIES[event.alert.severity]
        for hook, url in self._hooks:
            if url is None or rank < SEVERITIES[hook.min_severity]:
                continue
            try:
                self._queue.put_nowait((hook, url, event))
            except asyncio.QueueFull:
                metrics.ALERT_NOTIFICATIONS.labels(hook.name, "dropped").inc()
                log.error("alert notification to %s dropped: %d waiting", hook.name, QUEUE_LIMIT)

    async def _loop(self) -> None:
        while True:
            hook, url, event = await self._queue.get()
            try:
                await self._deliver(hook, url, event)
                self.sent += 1
                metrics.ALERT_NOTIFICATIONS.labels(hook.name, "sent").inc()
            except Exception as exc:
                metrics.ALERT_NOTIFICATIONS.labels(hook.name, "failed").inc()
                log.error("alert %s not delivered to %s: %s", event.alert.id, hook.name, exc)

    async def _deliver(self, hook: WebhookConfig, url: str, event: AlertEvent) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = slack_body(event) if hook.format == "slack" else json_body(event)
        timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._config.notify_attempts),
            wait=wait_exponential(multiplier=0.5, max=self._config.notify_max_backoff_s),
            retry=retry_if_exception_type((aiohttp.ClientError, TimeoutError, Undelivered)),
            reraise=True,
        ):
            with attempt:
                async with self._session.post(url, json=body, timeout=timeout) as response:
                    with contextlib.suppress(Exception):
                        await response.read()
                    if response.status == 429 or response.status >= 500:
                        raise Undelivered(f"HTTP {response.status}")
                    if response.status >= 300:
                        raise Refused(f"HTTP {response.status}")


def _url(hook: WebhookConfig) -> str | None:
    if hook.url is not None:
        return hook.url
    url = os.environ.get(hook.url_env or "")
    if not url:
        log.warning("webhook %s: %s is unset; nothing is sent to it", hook.name, hook.url_env)
    return url or None
