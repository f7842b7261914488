"""TLS on the bus, from ``nats.tls``: the client side of every connection the broker
opens, and the server's ``tls`` block for the servers it runs."""

from __future__ import annotations

import ssl
from typing import Any

from schemas.config import NatsTlsConfig


def client_context(tls: NatsTlsConfig | None) -> ssl.SSLContext | None:
    """The context a client verifies the server with (and, for mutual TLS, presents
    its own certificate from); None without TLS."""
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.client_cert_file and tls.client_key_file:
        context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    return context


def server_block(tls: NatsTlsConfig | None) -> dict[str, Any] | None:
    """nats-server's ``tls`` config block for a server we run; None without TLS (or
    without a certificate to serve: then the server is someone else's)."""
    if tls is None or tls.cert_file is None or tls.key_file is None:
        return None
    block: dict[str, Any] = {"cert_file": tls.cert_file, "key_file": tls.key_file}
    if tls.ca_file is not None:
        block["ca_file"] = tls.ca_file
    if tls.verify_clients:
        block["verify"] = True
    return block
