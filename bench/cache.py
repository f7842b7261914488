"""Cache hit latency against the full path: `python bench/cache.py`.

One nats-server, one worker (in-process mock provider), one ingress. The same load runs
with a deterministic request (temperature 0: answered from the cache after the first)
and with a non-deterministic one (temperature 0.7: through NATS and the worker every time).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import Result, closed_loop, paced
from broker.nats.embedded import EmbeddedNats, free_port
from cli import serve
from tests.procs import PROMPTBUS, Proc, wait_http


async def measure(args: argparse.Namespace, url: str) -> list[Result]:
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        for name, temperature in (
            ("cache hit (temperature 0)", 0.0),
            ("full path (temperature 0.7)", 0.7),
        ):
            payload = msgspec.json.encode(
                {
                    "model": "mock-gpt",
                    "temperature": temperature,
                    "messages": [{"role": "user", "content": "same"}],
                }
            )

            async def call(payload: bytes = payload) -> None:
                async with session.post(
                    url, data=payload, headers={"content-type": "application/json"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(response.status)

            await closed_loop(name, call, 4, 1.0)  # warm-up (and the one miss)
            results.append(
                await paced(f"{name} @{args.rate:.0f}/s", call, args.rate, args.duration)
            )
            results.append(await closed_loop(f"{name} c=64", call, 64, args.duration))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="promptbus-cache-"))
    with EmbeddedNats(work / "nats") as server:
        port = free_port()
        config = work / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "nats": {"url": server.url, "credentials_dir": server.credentials_dir},
                    "model_list": [
                        {
                            "model_name": "mock-gpt",
                            "deployments": [{"provider": "mock", "max_concurrency": 256}],
                        }
                    ],
                }
            )
        )
        quiet = [*PROMPTBUS, "--log-level", "WARNING"]
        procs = [Proc([*quiet, "worker", "-c", str(config)], work / "worker.log")]
        try:
            procs.append(
                Proc(
                    [*quiet, "ingress", "-c", str(config), "--port", str(port)],
                    work / "ingress.log",
                )
            )
            wait_http(f"http://127.0.0.1:{port}/readyz", procs[-1])
            time.sleep(1.0)
            results = serve.run(measure(args, f"http://127.0.0.1:{port}/v1/chat/completions"))
        finally:
            for proc in procs:
                proc.stop()
    print(f"\n{'path':<44} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
