"""A sliding-window success/failure counter in O(1) per event, O(buckets) per read.

A deque of every outcome would hold 150,000 entries at 5,000 requests/s over 30 s and
make each rate check a full scan; one-second buckets keep it to ``window_s`` entries.
"""

from __future__ import annotations

import math
import time


class OutcomeWindow:
    def __init__(self, window_s: float, bucket_s: float = 1.0) -> None:
        self._bucket_s = bucket_s
        self._size = max(1, math.ceil(window_s / bucket_s))
        self._totals = [0] * self._size
        self._failures = [0] * self._size
        self._epochs = [-1] * self._size  # which bucket number each slot currently holds

    def _slot(self, now: float) -> int:
        epoch = int(now / self._bucket_s)
        slot = epoch % self._size
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._totals[slot] = 0
            self._failures[slot] = 0
        return slot

    def add(self, *, failed: bool, now: float | None = None) -> None:
        slot = self._slot(time.monotonic() if now is None else now)
        self._totals[slot] += 1
        if failed:
            self._failures[slot] += 1

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """(requests, failures) over the window ending now."""
        epoch = int((time.monotonic() if now is None else now) / self._bucket_s)
        oldest = epoch - self._size + 1
        total = failed = 0
        for slot in range(self._size):
            if oldest <= self._epochs[slot] <= epoch:
                total += self._totals[slot]
                failed += self._failures[slot]
        return total, failed

    def rate(self, now: float | None = None) -> float:
        total, failed = self.counts(now)
        return failed / total if total else 0.0

    def clear(self) -> None:
        self._epochs = [-1] * self._size
