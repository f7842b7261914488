"""Facts JetStream writes into a delivered message's ack subject, read without parsing
all of ``Msg.metadata`` (which builds datetimes) on the hot path.

    $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
    $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>...  (v2)
"""

from __future__ import annotations


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


def queued_seconds(ack_subject: str | None, now_ns: int) -> float | None:
    """How long the message waited in the stream before this delivery."""
    parsed = _tokens(ack_subject)
    if parsed is None:
        return None
    tokens, base = parsed
    try:
        return max(0.0, (now_ns - int(tokens[base + 5])) / 1e9)
    except ValueError:
        return None


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
