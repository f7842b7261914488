"""NATS JWTs (nats-io/jwt v2), as much as the auth callout needs: read the server's
authorization request, and sign a user and the response that carries it.

A NATS JWT is ``base64url(header).base64url(claims).base64url(ed25519 signature)``,
signed by an nkey (``alg: ed25519-nkey``); the issuer's public nkey is the ``iss`` claim.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from typing import Any

import msgspec
import nacl.exceptions
import nacl.signing
import nkeys

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_encoder = msgspec.json.Encoder()


class InvalidJWT(ValueError):
    """Not a JWT, not signed by its issuer, or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """Sign ``claims`` (``iss``, ``iat`` and ``jti`` are filled in) with ``signer``."""
    body = {
        "jti": secrets.token_hex(16),
        "iat": int(time.time()),
        "iss": signer.public_key.decode(),
        **claims,
    }
    signed = f"{_b64(_encoder.encode(_HEADER))}.{_b64(_encoder.encode(body))}"
    return f"{signed}.{_b64(signer.sign(signed.encode()))}"


def _verify_key(public_key: str) -> nacl.signing.VerifyKey:
    """The ed25519 key inside a public nkey: base32 of prefix byte, 32 bytes, CRC16."""
    raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    return nacl.signing.VerifyKey(raw[1:-2])


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT signed by the key in its ``iss`` claim and not expired."""
    try:
        header, payload, signature = token.split(".")
        claims: dict[str, Any] = msgspec.json.decode(_unb64(payload))
        key = _verify_key(str(claims["iss"]))
        key.verify(f"{header}.{payload}".encode(), _unb64(signature))
    except (ValueError, KeyError, TypeError, binascii.Error, msgspec.DecodeError) as exc:
        raise InvalidJWT(str(exc)) from None
    except nacl.exceptions.BadSignatureError:
        raise InvalidJWT("bad signature") from None
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires < time.time():
        raise InvalidJWT("expired")
    return claims


def user_claims(
    user_nkey: str,
    account: str,
    name: str,
    publish: list[str],
    subscribe: list[str],
    expires_at: float,
) -> dict[str, Any]:
    """A user placed in ``account`` with allow-list permissions (unlimited counts)."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": name,
        "exp": int(expires_at),
        "nats": {
            "pub": {"allow": publish},
            "sub": {"allow": subscribe},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }


def response_claims(
    user_nkey: str, server_id: str, user_jwt: str | None, error: str | None
) -> dict[str, Any]:
    """The auth callout's answer: the signed user, or why not."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if user_jwt is not None:
        nats["jwt"] = user_jwt
    if error is not None:
        nats["error"] = error
    return {"sub": user_nkey, "aud": server_id, "nats": nats}
