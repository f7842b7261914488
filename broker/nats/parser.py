"""nats-py's protocol parser, reading a chunk by offset instead of cutting it up.

nats-py's ``Parser.parse`` copies each read into a bytearray, tries the ``MSG`` regular
expression on every ``HMSG`` before its own, and deletes each message from the front
of the buffer, which moves the rest of the buffer every time: its cost grows with the
messages a read carries. This one finds each control line with one ``find``, splits it,
slices the payload out of the chunk as it came, and keeps only an unfinished message
for the next read.

It decides only the two lines that carry messages (``MSG`` and ``HMSG``, in the forms
nats-server sends) and their payloads. Anything else (``PING``, ``PONG``, ``+OK``,
``-ERR``, ``INFO``, a line it does not recognise) goes, with all that follows it in
the chunk, to nats-py's own parser, so every other behaviour stays nats-py's.
"""

from __future__ import annotations

from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

_CRLF = b"\r\n"
_MSG_FIELDS = {b"MSG": (4, 5), b"HMSG": (5, 6)}  # without and with a reply subject


def _message_line(line: bytes) -> tuple[bytes, int, bytes, int, int] | None:
    """``MSG <subject> <sid> [reply] <size>`` or ``HMSG <subject> <sid> [reply]
    <header size> <size>`` as (subject, sid, reply, header size, size); None for any
    other line, or one of another form (nats-py's parser decides those)."""
    fields = line.split(b" ")
    counts = _MSG_FIELDS.get(fields[0])
    if counts is None or len(fields) not in counts:
        return None
    headed = fields[0] == b"HMSG"
    header_size, size = (fields[-2], fields[-1]) if headed else (b"0", fields[-1])
    reply = fields[3] if len(fields) == counts[1] else b""
    sid = fields[2]
    if not (fields[1] and sid.isdigit() and header_size.isdigit() and size.isdigit()):
        return None
    if len(fields) == counts[1] and not reply:
        return None
    return fields[1], int(sid), reply, int(header_size), int(size)


class WireParser(Parser):
    """A drop-in ``nats.protocol.parser.Parser``: the same state between reads (``buf``,
    ``state``, ``msg_arg``, ``needed``, ``header_needed``), the same calls on the client."""

    async def parse(self, data: bytes = b"") -> None:
        chunk = bytes(self.buf) + data if self.buf else data
        size = len(chunk)
        pos = 0
        # nats-py's client may reset the parser (a reconnect) while a message is being
        # processed; the chunk's rest then belongs to the old connection.
        mine = self.buf = bytearray()
        process = self.nc._process_msg
        while pos < size:
            if self.state == AWAITING_MSG_PAYLOAD:
                end = pos + self.needed
                if size < end + 2:
                    break
                arg = self.msg_arg
                header_size = self.header_needed
                if header_size:
                    headers: bytes | None = chunk[pos : pos + header_size]
                    payload = chunk[pos + header_size : end]
                    self.header_needed = 0
                else:
                    headers, payload = None, chunk[pos:end]
                pos = end + 2
                self.state = AWAITING_CONTROL_LINE
                await process(arg["sid"], arg["subject"], arg["reply"], payload, headers)
                if self.buf is not mine:
                    return
                continue
            eol = chunk.find(_CRLF, pos)
            if eol < 0:
                break  # a control line still coming (nats-py's parser waits too)
            line = _message_line(chunk[pos:eol])
            if line is None:
                self.buf = bytearray(chunk[pos:])  # nats-py's parser takes it from here
                await super().parse()
                return
            subject, sid, reply, self.header_needed, self.needed = line
            self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
            self.state = AWAITING_MSG_PAYLOAD
            pos = eol + 2
        if self.buf is mine:
            mine.extend(chunk[pos:])
