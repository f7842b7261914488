"""What reading a NATS message costs our connections, against nats-py's own reader.

One real nats-server, one publisher process sending messages shaped like the broker's
(a metered request's header block and a small JSON body), and this process subscribed
with two connections in turn: nats-py's ``Client`` and our ``GuardedNATS``
(broker/nats/parser.py, ``decode_headers``). Each round times this process's CPU
while it reads the whole backlog, alternating the two readers, and prints the CPU per
message of each and their ratio.

Run: .venv/bin/python bench/nats_reader.py [--messages 50000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client as NATS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.nats.connection import GuardedNATS
from broker.nats.embedded import EmbeddedNats

HEADERS = {  # a metered request's, as the ingress sends it
    "Pb-Request-Id": "01JXYZABCDEFGHJKMNPQRSTVWX",
    "Pb-Reply-To": "_INBOX.abcdefghijkl.12345",
    "Pb-Deadline": "1764681234567",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Nats-Msg-Id": "01JXYZABCDEFGHJKMNPQRSTVWX",
    "Pb-Key-Id": "key_abcdef123456",
    "Pb-Tenant": "bench",
    "Pb-Token-Estimate": "40",
    "Pb-Metered": "1",
    "Pb-Admission": "0123456789abcdef0123456789abcdef",
}
BODY = b'{"model":"bench","messages":[{"role":"user","content":"benchmark prompt"}]}'

ROOT = str(Path(__file__).resolve().parent.parent)
PUBLISHER = """
import asyncio, sys
from broker.nats.connection import GuardedNATS
async def main():
    nc = GuardedNATS()
    await nc.connect(sys.argv[1])
    for _ in range(int(sys.argv[3])):
        await nc.publish(sys.argv[2], {body!r}, headers={headers!r})
    await nc.flush()
    await nc.close()
asyncio.run(main())
"""


async def one_round(url: str, reader: type[NATS], messages: int) -> float:
    """CPU seconds per message this process spent reading ``messages``."""
    nc = reader()
    await nc.connect(url, pending_size=64 * 1024 * 1024)
    done = asyncio.get_running_loop().create_future()
    seen = 0
    started = 0.0

    async def on_message(msg: object) -> None:
        nonlocal seen, started
        seen += 1
        if seen == messages and not done.done():
            done.set_result(time.process_time() - started)

    subject = f"bench.reader.{reader.__name__}"
    await nc.subscribe(subject, cb=on_message, pending_msgs_limit=messages + 1)
    await nc.flush()
    # The messages wait in the server and the socket while this loop is blocked, so
    # that both readers meet the same backlog in full reads (a reader faster than the
    # publisher would otherwise pay for more, smaller reads).
    script = PUBLISHER.format(body=BODY, headers=HEADERS)
    publish = [sys.executable, "-c", script, url, subject, str(messages)]
    subprocess.run(publish, cwd=ROOT, check=True)  # noqa: ASYNC221 (the loop must not read)
    started = time.process_time()
    try:
        spent: float = await asyncio.wait_for(done, timeout=300)
    finally:
        await nc.close()
    return spent / messages


async def run(url: str, messages: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"nats-py": [], "promptbus": []}
    for _ in range(rounds):
        results["nats-py"].append(await one_round(url, NATS, messages))
        results["promptbus"].append(await one_round(url, GuardedNATS, messages))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with EmbeddedNats(Path(tempfile.mkdtemp(prefix="promptbus-bench-")), auth=False) as nats:
        results = asyncio.run(run(nats.url, args.messages, args.rounds))
    for name, spent in results.items():
        rounds = " / ".join(f"{s * 1e6:.1f}" for s in spent)
        print(f"{name:<10} CPU per message read: {rounds} µs")
    ratios = [ours / base for base, ours in zip(*results.values(), strict=True)]
    print(f"promptbus / nats-py, per round: {' / '.join(f'{r:.2f}' for r in ratios)}")
    print(f"median ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
