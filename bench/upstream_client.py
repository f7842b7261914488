"""What one upstream POST costs a worker: aiohttp against workers/providers/http1.py.

One fixed-response upstream (nginx when it is installed, else promptbus's mock upstream),
one process here, 32 callers in flight, alternating the two clients over rounds. Prints
this process's CPU per request (the client's whole cost: the upstream runs apart) and
the rate, for each client, and their ratio.

Run: .venv/bin/python bench/upstream_client.py [--requests 20000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.peers.run import upstream
from workers.providers.http1 import Http1Pool

BODY = b'{"model":"m","messages":[{"role":"user","content":"benchmark prompt"}],"max_tokens":16}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
CALLERS = 32

Post = Callable[[], Awaitable[bytes]]


async def timed(post: Post, requests: int) -> tuple[float, float]:
    """(CPU µs per request, requests per second) of ``requests`` POSTs by ``CALLERS``."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await post()

    await asyncio.gather(*(caller(20) for _ in range(CALLERS)))  # connections open, warm
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(requests // CALLERS) for _ in range(CALLERS)))
    done = requests // CALLERS * CALLERS
    return (time.process_time() - cpu) / done * 1e6, done / (time.perf_counter() - wall)


async def with_aiohttp(url: str, requests: int) -> tuple[float, float]:
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post() -> bytes:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                return await response.read()

        return await timed(post, requests)


async def with_http1(url: str, requests: int) -> tuple[float, float]:
    pool = Http1Pool(url, limit=256, connect_timeout_s=5)

    async def post() -> bytes:
        return (await pool.post(url, BODY, HEADERS)).body

    try:
        return await timed(post, requests)
    finally:
        await pool.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clients = {"aiohttp": with_aiohttp, "http1": with_http1}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
    with upstream(Path(tempfile.mkdtemp(prefix="promptbus-bench-"))) as (base, _, what):
        url = f"{base}/chat/completions"
        print(f"upstream: {what}")
        for _ in range(args.rounds):
            for name, client in clients.items():
                results[name].append(uvloop.run(client(url, args.requests)))
    for name, rounds in results.items():
        cpu = " / ".join(f"{c:.1f}" for c, _ in rounds)
        rate = " / ".join(f"{r:,.0f}" for _, r in rounds)
        print(f"{name:<8} CPU per request: {cpu} µs; {rate} req/s")
    ratios = [h[0] / a[0] for a, h in zip(results["aiohttp"], results["http1"], strict=True)]
    shown = " / ".join(f"{r:.2f}" for r in ratios)
    print(f"http1 / aiohttp CPU per request: {shown} (median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
