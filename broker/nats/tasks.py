"""Ending background tasks for sure.

Python 3.11's ``asyncio.wait_for`` (used inside nats-py's requests and fetches) can
return a result that arrived together with a cancellation and drop the cancellation. A
task looping after that never ends, and ``task.cancel(); await task`` then waits for
ever: a batch once stayed ``in_progress`` with every result in, because its progress
monitor dropped a cancel while nats-server restarted and the run waited for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

RECANCEL_S = 1.0  # a task still running this long after a cancel is cancelled again


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, every: float = RECANCEL_S) -> None:
    """Cancel ``tasks`` (None ones are skipped) and return once all have ended,
    cancelling again every ``every`` seconds those that dropped it. Their exceptions
    are retrieved and discarded: a task being stopped has nothing left to report."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    pending = {task for task in live if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=every)
        for task in pending:
            task.cancel()
    for task in live:
        if not task.cancelled():
            task.exception()


def raise_if_cancelled() -> None:
    """Honour a cancellation ``wait_for`` dropped: the task still counts it
    (``cancelling()``). Call it in loops that await NATS, after each await."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
