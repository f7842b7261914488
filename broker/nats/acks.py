"""Facts JetStream writes into a delivered message's ack subject, read without parsing
all of ``Msg.metadata`` (which builds datetimes) on the hot path; and acks that survive
a consumer leader moving to another node.

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>...  (v2)
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError


def identity(ack_subject: str | None) -> tuple[str, int, int] | None:
    """(stream, stream sequence, stored ns): the same on every redelivery of a message,
    and different for a new message that reuses a sequence a crash gave back."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return None
    tokens, base = parsed
    try:
        return tokens[base], int(tokens[base + 3]), int(tokens[base + 5])
    except ValueError:
        return None


def _tokens(ack_subject: str | None) -> tuple[list[str], int] | None:
    """The tokens and the index of the stream name, or None if not an ack subject."""
    if not ack_subject or not ack_subject.startswith("$JS.ACK."):
        return None
    tokens = ack_subject.split(".")
    if len(tokens) == 9:
        return tokens, 2
    if len(tokens) >= 11:
        return tokens, 4
    return None


def delivery_count(ack_subject: str | None) -> int:
    """How many times this message was delivered, this time included (1 if unknown)."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return 1
    tokens, base = parsed
    try:
        return int(tokens[base + 2])
    except ValueError:
        return 1


def stream_name(ack_subject: str | None) -> str | None:
    parsed = _tokens(ack_subject)
    return None if parsed is None else parsed[0][parsed[1]]


def stream_sequence(ack_subject: str | None) -> int | None:
    """The message's sequence in its stream: the same on every redelivery."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return None
    tokens, base = parsed
    try:
        return int(tokens[base + 3])
    except ValueError:
        return None


async def confirmed_ack(nc: NATS, msg: Msg, within: float, attempt_s: float = 1.0) -> bool:
    """Ack ``msg`` and wait for JetStream to confirm, sending the ack again until it does.

    A plain ack is fire-and-forget: if the consumer's leader dies (a cluster node
    restarting) the ack is lost and the answered request is redelivered and answered a
    second time. Acks are idempotent, so repeating one until the new leader confirms it
    (within ``ack_wait``) turns a node failure into a pause instead of duplicate work.
    False if no confirmation came within ``within`` seconds.
    """
    if not msg.reply:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        try:
            await nc.request(msg.reply, b"+ACK", timeout=min(attempt_s, left))
            return True
        except (NatsTimeoutError, NoRespondersError):
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        except ConnectionClosedError:
            return False
    return False
