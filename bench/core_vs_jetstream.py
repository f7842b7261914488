"""The latency price of the JetStream work queue, against core NATS request-reply.

Same machine, same mock provider code, same client connection; only the transport
differs:
  core:      nc.request() to a queue-group responder process (no storage, no acks;
             a request with no responder fails at once, one sent while the
             responder is busy or restarting is lost);
  jetstream: BrokerClient.request() -> stream -> pull consumer in a worker process ->
             reply, ack (stored, redelivered if the worker dies, excess waits in NATS).

Run: .venv/bin/python bench/core_vs_jetstream.py [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.overhead import Call, Result, closed_loop, paced
from broker.client import BrokerClient
from broker.nats.embedded import EmbeddedNats
from cli import serve
from schemas.settings import load_config
from tests.procs import Proc

_ADMIN: dict[str, Any] = {}  # nats.connect keywords: the bench server's admin login
_LOGIN_ENV = "PROMPTBUS_BENCH_LOGIN"  # the same, as JSON, for the responder process

CORE_SUBJECT = "bench.core.mock"
PAYLOAD = msgspec.json.encode(
    {"model": "bench-mock", "messages": [{"role": "user", "content": "benchmark prompt"}]}
)


async def responder(url: str) -> None:
    """A core NATS responder doing the worker's work: decode, mock answer, encode, reply."""
    import nats
    from nats.aio.msg import Msg

    from schemas.chat import encoder, request_decoder
    from workers.mock import content as mock_content

    # The parent's admin login, handed over in the environment (this is another process).
    nc = await nats.connect(url, **json.loads(os.environ[_LOGIN_ENV]))

    async def handle(msg: Msg) -> None:
        request = request_decoder.decode(msg.data)
        await msg.respond(encoder.encode(mock_content.completion(request, "bench-mock")))

    await nc.subscribe(CORE_SUBJECT, queue="bench", cb=handle)
    await serve.stop_event().wait()
    await nc.drain()


async def measure(args: argparse.Namespace, url: str, config: Path) -> list[Result]:
    import nats

    core = await nats.connect(url, **_ADMIN)
    broker = await BrokerClient.connect(load_config(config), url, name="bench")

    async def core_call() -> None:
        await core.request(CORE_SUBJECT, PAYLOAD, timeout=30)

    async def js_call() -> None:
        (await broker.request("bench-mock", PAYLOAD, timeout=30)).raise_for_error()

    targets: list[tuple[str, Call]] = [
        ("core request-reply", core_call),
        ("jetstream work queue", js_call),
    ]
    results = []
    try:
        for name, call in targets:
            await closed_loop(name, call, 8, 1.0)  # warm-up
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
    finally:
        await broker.close()
        await core.drain()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--responder", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.responder:
        serve.run(responder(args.responder))
        return

    work = Path(tempfile.mkdtemp(prefix="promptbus-core-"))
    with EmbeddedNats(work / "nats") as nats_server:
        _ADMIN.update(nats_server.login().nats_options())
        config = work / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "nats": {
                        "url": nats_server.url,
                        "credentials_dir": nats_server.credentials_dir,
                    },
                    "model_list": [
                        {
                            "model_name": "bench-mock",
                            "deployments": [{"provider": "mock", "max_concurrency": 512}],
                        }
                    ],
                }
            )
        )
        procs = [
            Proc(
                [sys.executable, __file__, "--responder", nats_server.url],
                work / "responder.log",
                env={_LOGIN_ENV: json.dumps(_ADMIN)},
            ),
            Proc(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "--log-level",
                    "WARNING",
                    "worker",
                    "-c",
                    str(config),
                ],
                work / "worker.log",
            ),
        ]
        try:
            time.sleep(2.0)
            results = serve.run(measure(args, nats_server.url, config))
        finally:
            for proc in procs:
                proc.stop()
    print(
        f"\n{'transport':<36} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for result in results:
        print(result.row(width=36))


if __name__ == "__main__":
    main()
