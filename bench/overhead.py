"""What the broker adds on top of the provider: `make bench` (or python bench/overhead.py).

Starts a real nats-server, the mock upstream (0 ms), one worker process and one ingress
process, then runs the same bounded load against
  (a) the mock upstream directly,
  (b) the ingress (HTTP -> NATS -> worker -> HTTP upstream),
  (c) the NATS client (NATS -> worker -> HTTP upstream),
  (d) the NATS client against the worker's in-process mock provider (broker cost alone),
The load generator is aiohttp on uvloop (cheapest client per request we measured).
Each target runs twice: paced at --rate req/s (latency) and closed-loop at --concurrency (max rate).
Prints requests/s and p50/p95/p99 and the overhead against (a).

--tenancy on: auth.required, and every request carries a virtual key whose key and tenant
have requests- and tokens-per-minute limits (high enough never to refuse) and daily
budgets: admission, shared rate-limit buckets and metered usage recording all run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.client import BrokerClient
from broker.nats.connection import connect
from broker.nats.credentials import Role, login_for
from broker.nats.embedded import EmbeddedNats, free_port
from broker.tenancy.admission import Admission
from cli import serve
from schemas.config import Config
from schemas.settings import load_config
from schemas.tenancy import Budget, KeySpec, Limits, TenantSpec
from tests.procs import PROMPTBUS, Proc, wait_http, wait_port

BODY = {
    "model": "",
    "messages": [{"role": "user", "content": "benchmark prompt"}],
    "max_tokens": 16,
}
Call = Callable[[], Awaitable[None]]


class Result:
    def __init__(self, name: str, latencies: list[float], errors: int, elapsed: float) -> None:
        self.name = name
        self.latencies = sorted(latencies)
        self.errors = errors
        self.elapsed = elapsed

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, int(p / 100 * len(self.latencies)))
        return self.latencies[index] * 1000

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def row(self, width: int = 44) -> str:
        return (
            f"{self.name:<{width}} {self.rate:>9.0f} {self.pct(50):>8.2f} {self.pct(95):>8.2f} "
            f"{self.pct(99):>8.2f} {self.errors:>6}"
        )


FIRST_ERRORS: dict[str, str] = {}  # target -> its first error, printed with the results


def _note_error(name: str, exc: Exception) -> None:
    FIRST_ERRORS.setdefault(name, f"{type(exc).__name__}: {str(exc)[:300]}")


async def closed_loop(name: str, call: Call, concurrency: int, duration: float) -> Result:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def user() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call()
                latencies.append(time.perf_counter() - started)
            except Exception as exc:
                errors += 1
                _note_error(name, exc)

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return Result(name, latencies, errors, time.perf_counter() - started)


async def paced(name: str, call: Call, rate: float, duration: float) -> Result:
    """Open loop: start a request every 1/rate s whatever the latency (no coordinated omission)."""
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            await call()
            latencies.append(time.perf_counter() - scheduled)
        except Exception as exc:
            errors += 1
            _note_error(name, exc)

    started = time.perf_counter()
    total = int(rate * duration)
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return Result(name, latencies, errors, time.perf_counter() - started)


def http_call(session: aiohttp.ClientSession, url: str, model: str, key: str | None = None) -> Call:
    payload = msgspec.json.encode(BODY | {"model": model})
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"

    async def call() -> None:
        async with session.post(url, data=payload, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(body)

    return call


def nats_call(client: BrokerClient, model: str) -> Call:
    payload = msgspec.json.encode(BODY | {"model": model})

    async def call() -> None:
        reply = await client.request(model, payload, timeout=30)
        reply.raise_for_error()

    return call


async def _bench_key(config: Config, nats_url: str) -> str:
    """A key whose limits and budgets are all checked and never refuse."""
    nc = await connect(nats_url, "bench-admin", login_for(config, Role.ADMIN))
    admission = await Admission.open(nc, config)
    try:
        limits = Limits(rpm=10_000_000, tpm=1_000_000_000)
        budgets = [Budget(max_usd=1e9, period="daily")]
        await admission.keys.set_tenant("bench", TenantSpec(limits=limits, budgets=budgets))
        issued = await admission.keys.create_key(
            KeySpec(tenant="bench", limits=limits, budgets=budgets)
        )
        return issued.key
    finally:
        await admission.close()
        await nc.close()


async def run(
    args: argparse.Namespace, nats_url: str, upstream: str, ingress: str, config_path: Path
) -> list[Result]:
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        config = load_config(config_path)
        key = await _bench_key(config, nats_url) if args.tenancy == "on" else None
        client = await BrokerClient.connect(config, nats_url, name="bench", api_key=key)
        try:
            targets = [
                (
                    "(a) upstream direct",
                    http_call(http, f"{upstream}/v1/chat/completions", "bench-upstream"),
                ),
                (
                    "(b) ingress -> worker -> upstream",
                    http_call(http, f"{ingress}/v1/chat/completions", "bench-upstream", key),
                ),
                ("(c) NATS client -> worker -> upstream", nats_call(client, "bench-upstream")),
                ("(d) NATS client -> worker (in-process mock)", nats_call(client, "bench-mock")),
            ]
            for name, call in targets:  # warm-up: connections, JIT-free but caches and pools
                await closed_loop(name, call, 8, 1.0)
            for name, call in targets:
                results.append(
                    await paced(f"{name} @{args.rate:.0f}/s", call, args.rate, args.duration)
                )
            for name, call in targets:
                results.append(
                    await closed_loop(
                        f"{name} c={args.concurrency}", call, args.concurrency, args.duration
                    )
                )
            if args.concurrency < 256:
                results.append(
                    await closed_loop(f"{targets[3][0]} c=256", targets[3][1], 256, args.duration)
                )
        finally:
            await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--rate", type=float, default=500.0, help="paced request rate")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop concurrency")
    parser.add_argument(
        "--metrics", choices=["on", "off"], default="on", help="Prometheus metrics in the broker"
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="broker log level (DEBUG: a log line per request)"
    )
    parser.add_argument(
        "--tenancy", choices=["on", "off"], default="off", help="keys, limits and budgets"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (each serves every model)"
    )
    parser.add_argument(
        "--upstream-latency-ms",
        type=int,
        default=0,
        help="the mock upstream's latency (50 with --concurrency 256: a provider-bound load)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="promptbus-bench-"))
    procs: list[Proc] = []
    with EmbeddedNats(work / "nats", log_file=work / "nats.log") as nats:
        try:
            upstream_port, ingress_port = free_port(), free_port()
            upstream = f"http://127.0.0.1:{upstream_port}"
            config = work / "bench.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "nats": {"url": nats.url, "credentials_dir": nats.credentials_dir},
                        "auth": {"required": args.tenancy == "on"},
                        "model_list": [
                            {
                                "model_name": "bench-mock",
                                "deployments": [{"provider": "mock", "max_concurrency": 512}],
                            },
                            {
                                "model_name": "bench-upstream",
                                "deployments": [
                                    {
                                        "provider": "openai",
                                        "base_url": f"{upstream}/v1",
                                        "max_concurrency": 256,
                                    }
                                ],
                            },
                        ],
                    }
                )
            )
            up = Proc(
                [
                    *PROMPTBUS,
                    "mock-upstream",
                    "--port",
                    str(upstream_port),
                    "--latency-ms",
                    str(args.upstream_latency_ms),
                ],
                work / "upstream.log",
            )
            procs.append(up)
            wait_port("127.0.0.1", upstream_port, up)
            broker = [*PROMPTBUS, "--log-level", args.log_level]
            env = {"PROMPTBUS_METRICS": args.metrics}
            for index in range(args.workers):
                log = work / f"worker-{index}.log"
                procs.append(Proc([*broker, "worker", "-c", str(config)], log, env))
            ingress = Proc(
                [*broker, "ingress", "-c", str(config), "--port", str(ingress_port)],
                work / "ingress.log",
                env,
            )
            procs.append(ingress)
            base = f"http://127.0.0.1:{ingress_port}"
            wait_http(f"{base}/readyz", ingress)
            time.sleep(1.0 + args.workers / 2)  # worker presence
            results = serve.run(run(args, nats.url, upstream, base, config))
        finally:
            for proc in procs:
                proc.stop()

    print(f"\nmetrics {args.metrics}, broker log level {args.log_level}, tenancy {args.tenancy}")
    print(f"{'target':<44} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for result in results:
        print(result.row())
    direct, through = results[0], results[1]
    p50, p99 = through.pct(50) - direct.pct(50), through.pct(99) - direct.pct(99)
    print(
        f"\ningress overhead at {args.rate:.0f} req/s: p50 +{p50:.2f} ms, p99 +{p99:.2f} ms"
        " (targets: p50 <= 1 ms, p99 <= 5 ms)"
    )
    best = max(r.rate for r in results if r.name.startswith("(d)"))
    processes = "one worker process" if args.workers == 1 else f"{args.workers} worker processes"
    print(f"NATS client path through {processes}: {best:.0f} req/s (target >= 10000)")
    for name, error in FIRST_ERRORS.items():
        print(f"first error of {name}: {error}")


if __name__ == "__main__":
    main()
