"""The nats-server config promptbus writes for the servers it runs (embedded, cluster,
compose): the payload limit, TLS when configured, and, with credentials, who may
connect and do what.

With credentials the server has two accounts:

- ``PROMPTBUS``, with JetStream: one nkey user per broker role (``credentials``), each
  with its permissions (``permissions``), and the tenants the auth callout admits;
- ``SYS``, the system account: one user, for the auth service to disconnect a revoked
  key's connections.

A connection with no credentials goes to the auth callout, which admits only a valid
promptbus key (``broker/tenancy/nats_access.py``); while no auth service runs, only the
broker roles get in. The file is JSON, which nats-server's config syntax includes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from broker.nats.credentials import ACCOUNT, ISSUER, SYSTEM_ACCOUNT, Credentials, Role
from broker.nats.permissions import role_permissions
from broker.nats.subjects import Subjects
from broker.nats.tls import server_block
from schemas.config import NatsTlsConfig

CONFIG_NAME = "nats-server.conf"


def server_settings(
    max_payload: int,
    credentials: Credentials | None,
    brokers: Iterable[Subjects] = (Subjects(),),
    tls: NatsTlsConfig | None = None,
) -> dict[str, Any]:
    """The server config as a dict (what ``write_server_config`` writes)."""
    settings: dict[str, Any] = {"max_payload": max_payload}
    block = server_block(tls)
    if block is not None:
        settings["tls"] = block
    if credentials is None:
        return settings
    brokers = list(brokers)
    roles = [role for role in Role if role is not Role.SYSTEM]
    users = [
        {"nkey": credentials.public_key(role), "permissions": role_permissions(role, brokers)}
        for role in roles
    ]
    settings["accounts"] = {
        ACCOUNT: {"jetstream": "enabled", "users": users},
        SYSTEM_ACCOUNT: {"users": [{"nkey": credentials.public_key(Role.SYSTEM)}]},
    }
    settings["system_account"] = SYSTEM_ACCOUNT
    settings["authorization"] = {
        "auth_callout": {
            "issuer": credentials.public_key(ISSUER),
            "auth_users": [credentials.public_key(role) for role in Role],
            "account": ACCOUNT,
        },
        "timeout": 3,  # seconds for a login, the auth callout's answer included
    }
    return settings


def write_server_config(
    directory: Path,
    max_payload: int,
    credentials: Credentials | None = None,
    brokers: Iterable[Subjects] = (Subjects(),),
    tls: NatsTlsConfig | None = None,
) -> Path:
    """``nats-server.conf`` beside the store (mode 600), passed with ``-c``; flags
    override the rest. Written at every start: edits are replaced."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    text = json.dumps(server_settings(max_payload, credentials, brokers, tls), indent=2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.chmod(path, 0o600)
    return path
