"""Who a connection is on the bus: one nkey per broker role, and tenants by their key.

``promptbus up``, ``promptbus nats`` and the local cluster generate the seeds once, under
``nats.credentials_dir`` (a directory of mode 700, each file 600), and write the public
halves into the server's config (``server_config``). A broker process logs in with its
role's seed: nkeys sign the server's nonce, so no secret crosses the wire and reading the
server config gives nobody a login. A tenant's service logs in with its promptbus key as
a token; the auth callout (``broker/tenancy/nats_access.py``) checks it.

Each role has its own inbox prefix, ``_INBOX_<role>``, so permissions can keep every
caller's replies its own (``permissions``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nkeys

from broker.nats.tls import client_context

if TYPE_CHECKING:
    from schemas.config import Config


class Role(StrEnum):
    """The broker's own kinds of connection; each has its permissions (``permissions``)."""

    ADMIN = "admin"  # the CLI, ``promptbus up``'s provisioning, operators' tools
    INGRESS = "ingress"
    WORKER = "worker"
    BATCHER = "batcher"
    AUTH = "auth"  # the auth callout service: admits tenants' connections
    SYSTEM = "system"  # the system account, for the auth service to disconnect revoked keys


ISSUER = "issuer"  # the account key that signs the users the auth callout admits
ACCOUNT = "PROMPTBUS"  # the account every broker role and tenant is placed in
SYSTEM_ACCOUNT = "SYS"


@dataclass(frozen=True)
class Login:
    """How one connection proves who it is: nats-py ``connect`` keywords, and the
    prefix of its reply inboxes."""

    options: dict[str, Any] = field(default_factory=dict)
    inbox_prefix: str = "_INBOX"

    def nats_options(self) -> dict[str, Any]:
        """Keywords for a plain ``nats.connect``."""
        return {**self.options, "inbox_prefix": self.inbox_prefix}

    def over(self, tls: ssl.SSLContext | None) -> Login:
        """This login over TLS (``broker.nats.tls.client_context``); itself without."""
        return self if tls is None else Login({**self.options, "tls": tls}, self.inbox_prefix)


def inbox_prefix(role: Role | str) -> str:
    return f"_INBOX_{role}"


TENANT_INBOXES = "_INBOX_tenant"  # a tenant's inboxes: ``_INBOX_tenant.<digest>.>``


def tenant_inbox_prefix(key_digest: str) -> str:
    """A tenant connection's inboxes: derived from its key's digest, which both the
    service (from the key it holds) and the auth callout (from the key store) know."""
    return f"{TENANT_INBOXES}.{key_digest[:20]}"


def tenant_login(api_key: str) -> Login:
    """A tenant's service: its promptbus key as the NATS token."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    return Login({"token": api_key}, tenant_inbox_prefix(digest))


def _new_seed(prefix: int) -> bytes:
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), prefix)
    return seed


@dataclass(frozen=True)
class Credentials:
    """The seeds in one directory: ``<role>.nk`` per role and ``issuer.nk``."""

    directory: Path

    @classmethod
    def create(cls, directory: str | Path) -> Credentials:
        """Make the directory and any seed it lacks; existing seeds are kept, so a
        restart does not log running processes out."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        wanted = [(role.value, nkeys.PREFIX_BYTE_USER) for role in Role]
        wanted.append((ISSUER, nkeys.PREFIX_BYTE_ACCOUNT))
        for name, prefix in wanted:
            seed_file = path / f"{name}.nk"
            if not seed_file.exists():
                fd = os.open(seed_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(_new_seed(prefix) + b"\n")
            os.chmod(seed_file, 0o600)
        return cls(path)

    def seed_file(self, name: Role | str) -> Path:
        return self.directory / f"{name}.nk"

    def has(self, name: Role | str) -> bool:
        return self.seed_file(name).is_file()

    def key_pair(self, name: Role | str) -> nkeys.KeyPair:
        return nkeys.from_seed(bytearray(self.seed_file(name).read_bytes().strip()))

    def public_key(self, name: Role | str) -> str:
        key: bytes = self.key_pair(name).public_key
        return key.decode()

    def login(self, role: Role) -> Login:
        return Login({"nkeys_seed": str(self.seed_file(role))}, inbox_prefix(role))


def login_for(config: Config, role: Role) -> Login:
    """How a broker process of ``role`` logs in: an operator's ``.creds`` file when one is
    configured, else its seed in the credentials directory, else anonymously (a server
    without authentication); over TLS when ``nats.tls`` says so."""
    tls = client_context(config.nats.tls)
    if config.nats.credentials_file:
        return Login({"user_credentials": config.nats.credentials_file}).over(tls)
    credentials = Credentials(Path(config.nats.credentials_dir))
    if credentials.has(role):
        return credentials.login(role).over(tls)
    return Login().over(tls)
