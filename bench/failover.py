"""The primary deployment dies mid-run: what do clients see? `python bench/failover.py`

A real nats-server, two mock upstream processes (primary, backup), one worker process.
The client sends a paced load (--rate req/s for --duration s) to a model whose only
deployment is the primary, with the backup model as its fallback. After --kill-at
seconds the primary upstream process is SIGKILLed. Reported: requests lost (no answer
at all), errors seen by clients, answers by deployment, latency during the switch, and
time from the kill to the breaker opening and to the first answer from the backup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.client import BrokerClient
from broker.nats.embedded import EmbeddedNats, free_port
from cli import serve
from schemas.errors import BrokerError
from schemas.settings import load_config
from tests.procs import PROMPTBUS, Proc, wait_port

_ADMIN: dict[str, Any] = {}  # nats.connect keywords: the bench server's admin login

PAYLOAD = msgspec.json.encode(
    {"model": "primary-model", "messages": [{"role": "user", "content": "failover"}]}
)


class Outcome(msgspec.Struct):
    sent: float
    done: float = 0.0
    status: int = 0  # 0: never answered
    deployment: str = ""


async def breaker_opened(nc: nats.NATS, since: float) -> float | None:
    kv = await nc.jetstream().key_value("pb_breakers")
    while time.monotonic() - since < 30:
        try:
            entry = await kv.get("primary")
            if entry.value and json.loads(entry.value)["state"] != "closed":
                return time.monotonic() - since
        except nats.js.errors.KeyNotFoundError:
            pass
        await asyncio.sleep(0.01)
    return None


async def load(args: argparse.Namespace, config: Path, nats_url: str, primary: Proc) -> None:
    client = await BrokerClient.connect(load_config(config), nats_url, name="bench-failover")
    watcher = await nats.connect(nats_url, **_ADMIN)
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(outcome: Outcome) -> None:
        try:
            reply = await client.request("primary-model", PAYLOAD, timeout=args.timeout)
            outcome.status = reply.status
            outcome.deployment = reply.headers.get("Pb-Deployment", "")
        except BrokerError as exc:
            outcome.status = exc.status if exc.detail.code != "deadline_exceeded" else 0
        outcome.done = time.monotonic()

    started = time.monotonic()
    killed_at = 0.0
    opened: asyncio.Task[float | None] | None = None
    for i in range(int(args.rate * args.duration)):
        scheduled = started + i / args.rate
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        if not killed_at and scheduled - started >= args.kill_at:
            os.kill(primary.popen.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            opened = asyncio.create_task(breaker_opened(watcher, killed_at))
        outcome = Outcome(sent=time.monotonic())
        outcomes.append(outcome)
        task = asyncio.create_task(one(outcome))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    to_open = await opened if opened else None
    await client.close()
    await watcher.close()

    lost = [o for o in outcomes if o.status == 0]
    errors = [o for o in outcomes if o.status not in (0, 200)]
    by_deployment: dict[str, int] = {}
    for o in outcomes:
        if o.status == 200:
            by_deployment[o.deployment] = by_deployment.get(o.deployment, 0) + 1
    after = [o for o in outcomes if o.sent >= killed_at and o.deployment == "backup"]
    first_backup = min((o.done for o in after), default=float("nan")) - killed_at
    window = [
        o.done - o.sent for o in outcomes if killed_at - 1 <= o.sent <= killed_at + 2 and o.done
    ]
    print(f"\nrequests sent: {len(outcomes)} at {args.rate:.0f}/s", end=", ")
    print(f"primary killed at {args.kill_at:.1f}s")
    print(f"requests lost (no answer): {len(lost)}")
    print(f"errors seen by clients:    {len(errors)} {sorted({o.status for o in errors})}")
    print(f"answered by deployment:    {by_deployment}")
    print(
        f"kill -> breaker open:      {to_open * 1000:.0f} ms" if to_open else "breaker never opened"
    )
    print(f"kill -> first backup answer (request sent after the kill): {first_backup * 1e3:.0f} ms")
    if window:
        window.sort()
        print(
            f"latency of requests sent 1 s before to 2 s after the kill: p50 "
            f"{window[len(window) // 2] * 1000:.1f} ms, max {window[-1] * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--kill-at", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request deadline")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="promptbus-failover-"))
    with EmbeddedNats(work / "nats") as server:
        _ADMIN.update(server.login().nats_options())
        ports = {"primary": free_port(), "backup": free_port()}
        config = work / "failover.yaml"
        breaker = {"failure_threshold": 5, "cooldown_s": 30}
        config.write_text(
            yaml.safe_dump(
                {
                    "nats": {"url": server.url, "credentials_dir": server.credentials_dir},
                    "model_list": [
                        {
                            "model_name": "primary-model",
                            "fallbacks": ["backup-model"],
                            "deployments": [
                                {
                                    "provider": "openai",
                                    "name": name,
                                    "base_url": f"http://127.0.0.1:{ports[name]}/v1",
                                    "max_concurrency": 64,
                                    "breaker": breaker,
                                    "retry": {"max_attempts": 2, "initial_backoff_s": 0.05},
                                }
                            ],
                        }
                        if name == "primary"
                        else {
                            "model_name": "backup-model",
                            "deployments": [
                                {
                                    "provider": "openai",
                                    "name": name,
                                    "base_url": f"http://127.0.0.1:{ports[name]}/v1",
                                    "max_concurrency": 64,
                                }
                            ],
                        }
                        for name in ("primary", "backup")
                    ],
                }
            )
        )
        upstreams = {
            name: Proc(
                [*PROMPTBUS, "mock-upstream", "--port", str(port), "--latency-ms", "20"],
                work / f"{name}.log",
            )
            for name, port in ports.items()
        }
        procs = list(upstreams.values())
        try:
            for name, proc in upstreams.items():
                wait_port("127.0.0.1", ports[name], proc)
            procs.append(
                Proc(
                    [*PROMPTBUS, "--log-level", "WARNING", "worker", "-c", str(config)],
                    work / "worker.log",
                )
            )
            time.sleep(2.0)
            serve.run(load(args, config, server.url, upstreams["primary"]))
        finally:
            for proc in procs:
                proc.stop()


if __name__ == "__main__":
    main()
