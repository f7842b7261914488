"""N chat requests in flight through the real ``BrokerClient``, counted two ways.

The client resolves each request once; a second subscription on the client's own
connection counts every reply message that reaches the client per request, so a
duplicate answer (a request answered twice after a redelivery) shows up even though
the client drops it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from broker.client import BrokerClient
from schemas.errors import BrokerError


@dataclass
class BatchResult:
    requested: int
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    replies: collections.Counter[str] = field(default_factory=collections.Counter)
    reconnects: int = 0  # of the caller's connection during the run
    seconds: float = 0.0
    reasked: int = 0  # asked again by the client after a reply was lost in a reconnect

    @property
    def lost(self) -> int:
        """Requests the caller never got an answer for (an error is an answer, but counted)."""
        return self.requested - self.ok - sum(self.errors.values())

    @property
    def duplicated(self) -> int:
        """Reply messages beyond the first for the same request."""
        return sum(count - 1 for count in self.replies.values() if count > 1)

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.requested} requests in {self.seconds:.1f}s, ok {self.ok}, "
            f"errors {dict(self.errors)}, lost {self.lost}, duplicated {self.duplicated}, "
            f"reply messages {sum(self.replies.values())}, re-asked {self.reasked}"
        )


def body(index: int, model: str) -> bytes:
    """Distinct bodies, so no answer can come from the response cache."""
    return msgspec.json.encode(
        {"model": model, "messages": [{"role": "user", "content": f"request {index}"}]}
    )


async def run_batch(
    client: BrokerClient,
    n: int,
    model: str,
    *,
    at_fraction: float = 0.3,
    disrupt: Callable[[], Awaitable[None]] | None = None,
    timeout: float = 120.0,
    concurrency: int | None = None,
) -> BatchResult:
    """Send ``n`` requests (all in flight, or ``concurrency`` at a time); call ``disrupt``
    once ``at_fraction`` of them are answered; wait for every answer."""
    result = BatchResult(n)
    spy = client.nc  # what reaches the caller
    reasked_before = client.reasked
    reconnects_before = client.nc.stats["reconnects"]
    prefix = client._prefix  # the client's reply inbox: <prefix>.<token>
    prefix_len = len(prefix) + 1

    async def count(msg: object) -> None:
        subject: str = msg.subject  # type: ignore[attr-defined]
        headers = msg.headers or {}  # type: ignore[attr-defined]
        if headers.get("Pb-Kind") != "chunk":
            result.replies[subject[prefix_len:]] += 1

    sub = await spy.subscribe(f"{prefix}.*", cb=count)
    await spy.flush()
    answered = asyncio.Event()
    threshold = max(1, int(n * at_fraction))
    gate = asyncio.Semaphore(concurrency or n)

    async def one(index: int) -> None:
        async with gate:
            try:
                reply = await client.request(model, body(index, model), timeout=timeout)
                if reply.status == 200:
                    result.ok += 1
                else:
                    result.errors[str(reply.status)] += 1
            except BrokerError as exc:
                result.errors[f"{exc.status} {exc.detail.code}"] += 1
            if result.ok + sum(result.errors.values()) >= threshold:
                answered.set()

    started = time.perf_counter()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    if disrupt is not None:
        await answered.wait()
        await disrupt()
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    await asyncio.sleep(0.5)  # a late duplicate reply would arrive by now
    await sub.unsubscribe()
    result.reasked = client.reasked - reasked_before
    result.reconnects = client.nc.stats["reconnects"] - reconnects_before
    return result
