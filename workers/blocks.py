"""The lines of a block message (schemas/line_block.py), each handled as a message.

A pool serves a line as it serves a single-line message: ``LineMsg`` has the line's
headers and body and the block's subject and ack subject (so its stream, sequence,
delivery count and queue time are the block's). What would settle a message settles
only the line here: its ack and term are no-ops, the pool acks the block once every line
is settled. Its nak, a line the pool cannot serve yet (the breaker is open and nothing
else takes it), is kept on the line: the pool waits that long and serves it again, as
the queue would have redelivered it, while the block stays held (its in-progress acks
keep it from being redelivered).

Each line has an identity of its own for the answered memory, the poison counter and
the failover de-duplication id: the block's, with the line's place in it.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.nats import acks
from schemas.line_block import decode_block


class LineMsg(Msg):
    """One line of a block, as a pool handles a message."""

    def __init__(
        self,
        client: NATS,
        block: Msg,
        place: int,
        headers: dict[str, str],
        body: bytes,
        block_identity: tuple[str, int, int] | None,
    ) -> None:
        super().__init__(
            _client=client, subject=block.subject, reply=block.reply, data=body, headers=headers
        )
        self.place = place
        # (stream, sequence, stored ns + place): unique per line, stable on redelivery
        self.identity = (
            None
            if block_identity is None
            else (block_identity[0], block_identity[1], block_identity[2] + place)
        )
        self.handed_back: float | None = None  # nak(delay): serve it again after this
        self.elsewhere = False  # another copy of the block in this process has it

    @property
    def key(self) -> str:
        """``<sequence>-<place>``: the line's part of per-message keys."""
        return f"{acks.stream_sequence(self.reply)}-{self.place}"

    async def ack(self) -> None:
        return None

    async def term(self) -> None:
        return None

    async def nak(self, delay: int | float | None = None) -> None:
        self.handed_back = float(delay or 0.0)

    async def in_progress(self) -> None:
        return None  # the block's in-progress acks cover it


def lines_of(client: NATS, block: Msg) -> list[LineMsg]:
    """The block's lines; ``msgspec.DecodeError``/``ValidationError`` when its body is
    not a block."""
    identity = acks.identity(block.reply)
    return [
        LineMsg(client, block, place, headers, body, identity)
        for place, (headers, body) in enumerate(decode_block(block.data))
    ]
