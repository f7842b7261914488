"""A deployment's own rate ceiling (the upstream's RPM/TPM quota), enforced by pulling.

Over the ceiling a pool simply stops taking requests: they wait in the queue, where
NATS keeps them, instead of being sent only to collect 429s. The ceiling is the
deployment's; each worker process serving it takes an equal share (``share()`` returns
the number of live workers serving the deployment, from the presence bucket).

Requests per minute is a token bucket holding one second's worth (at least one); tokens
per minute is a debt counter: a request's estimated tokens are charged when it starts,
corrected with the reported usage, and no request starts while the minute's budget is
in debt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Pacer:
    def __init__(
        self, rpm: int | None, tpm: int | None, share: Callable[[], int] = lambda: 1
    ) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._share = share
        now = time.monotonic()
        self._requests = 1.0  # start with one token: never refuse the very first request
        self._tokens = 0.0  # tokens used beyond what the per-minute rate has paid back
        self._at = now
        self._waiters = 0

    def _rates(self) -> tuple[float | None, float | None]:
        """Requests and tokens per second for this process."""
        share = max(1, self._share())
        rps = self._rpm / 60 / share if self._rpm else None
        tps = self._tpm / 60 / share if self._tpm else None
        return rps, tps

    def _advance(self) -> tuple[float | None, float | None]:
        now = time.monotonic()
        elapsed = now - self._at
        self._at = now
        rps, tps = self._rates()
        if rps is not None:
            self._requests = min(max(1.0, rps), self._requests + elapsed * rps)
        if tps is not None:
            self._tokens = max(0.0, self._tokens - elapsed * tps)
        return rps, tps

    def _tokens_ceiling(self, tps: float) -> float:
        return max(tps, 1.0)  # one second's worth of tokens may be in flight beyond pace

    def available(self) -> int:
        """Requests that may start now (a large number when nothing limits)."""
        rps, tps = self._advance()
        if tps is not None and self._tokens >= self._tokens_ceiling(tps):
            return 0
        if rps is None:
            return 1 << 30
        return max(0, int(self._requests) - self._waiters)

    def ready_in(self) -> float:
        """Seconds until ``available()`` turns positive (0 if it is)."""
        rps, tps = self._advance()
        wait = 0.0
        if rps is not None and self._requests < 1:
            wait = (1 - self._requests) / rps
        if tps is not None:
            excess = self._tokens - self._tokens_ceiling(tps)
            if excess >= 0:
                wait = max(wait, excess / tps + 0.001)
        return wait

    async def acquire(self, estimated_tokens: int = 0) -> None:
        """Wait for the ceiling to allow one more request, then charge it."""
        self._waiters += 1
        try:
            while True:
                wait = self.ready_in()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        finally:
            self._waiters -= 1
        if self._rpm:
            self._requests -= 1
        if self._tpm:
            self._tokens += estimated_tokens

    def correct(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Replace a request's estimate with its reported usage."""
        if self._tpm:
            self._advance()
            self._tokens = max(0.0, self._tokens + actual_tokens - estimated_tokens)
