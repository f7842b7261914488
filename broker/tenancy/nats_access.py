"""Tenants' services on the bus: NATS logins made from promptbus keys (the auth callout).

A service connects with its promptbus key as the token (``credentials.tenant_login``).
nats-server asks us (``$SYS.REQ.USER.AUTH``, nats-server's auth callout) whether to let
it in; we look the key up in the followed key store and answer with a user JWT, signed
by the issuer key, whose permissions allow only:

- publishing requests for the models the key and its tenant may use (their queues,
  their deployments' subjects and their fallbacks) and cancelling its own requests;
- reading the presence and breaker buckets (where to send a request);
- subscribing to its own inboxes, ``_INBOX_tenant.<digest>.>``.

Why the callout rather than per-key NATS users in the server config: keys are made and
revoked at run time through the admin API, by any ingress, and the server would need a
config rewrite and reload for each; the callout answers from the same key store the HTTP
door uses, so a key works on both at once. A revoked or rotated key's connections are
disconnected within ``SWEEP_S`` (the system account's kick); the user JWT also expires
after ``LOGIN_TTL_S``, when the client logs in again and the key is checked anew.

Every ingress runs one; they answer as a queue group, so each login is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from pathlib import Path

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.nats import jwt
from broker.nats.connection import connect
from broker.nats.credentials import ACCOUNT, ISSUER, Credentials, Role, tenant_inbox_prefix
from broker.nats.permissions import AUTH_REQUESTS
from broker.nats.subjects import BREAKERS, WORKERS, Subjects, bucket, subject_token
from broker.nats.tasks import cancel_and_wait
from broker.nats.tls import client_context
from broker.observability.metrics import NATS_LOGINS
from broker.tenancy.admission import Admission
from schemas.config import Config

log = logging.getLogger(__name__)

LOGIN_TTL_S = 900.0  # a tenant's NATS login is checked again at least this often
SWEEP_S = 1.0  # how often the logins of revoked keys are looked for
REFUSE_AFTER_S = 0.25  # an unknown key is refused this late (another broker may know it)
_KICK = "$SYS.REQ.SERVER.{server}.KICK"
_encoder = msgspec.json.Encoder()


def tenant_permissions(
    config: Config, allowed_models: set[str] | None, key_digest: str
) -> tuple[list[str], list[str]]:
    """(publish, subscribe) allow-lists of a tenant's service."""
    subjects = Subjects.of(config)
    prefix = config.nats.subject_prefix
    publish = [subjects.cancel]
    if allowed_models is None:
        publish += [f"{prefix}.chat.*", f"{prefix}.embed.*", f"{prefix}.dep.*"]
    else:
        names = set(allowed_models)
        for name in allowed_models:
            model = config.model(name)
            if model is not None:
                names.update(model.fallbacks)
                names.update(model.context_window_fallbacks)
        for name in sorted(names):
            model = config.model(name)
            if model is None:
                continue
            publish.append(subjects.queue(name, model.mode))
            publish += [subjects.dep(d.name) for d in model.deployments]
    for kind in (WORKERS, BREAKERS):
        stream = f"KV_{bucket(prefix, kind)}"
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    return publish, [f"{tenant_inbox_prefix(key_digest)}.>"]


class NatsAccess:
    """The auth callout service of one ingress (see the module docstring)."""

    def __init__(self, config: Config, admission: Admission, credentials: Credentials) -> None:
        self._config = config
        self._admission = admission
        self._credentials = credentials
        self._issuer = credentials.key_pair(ISSUER)
        self._nc: NATS | None = None
        self._system: NATS | None = None
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # key digest -> the (server id, client id) of each connection it logged in
        self._logins: defaultdict[str, set[tuple[str, int]]] = defaultdict(set)

    @classmethod
    def available(cls, config: Config) -> Credentials | None:
        """The credentials that running the callout takes, when this process has them."""
        credentials = Credentials(Path(config.nats.credentials_dir))
        needed = (Role.AUTH, Role.SYSTEM, ISSUER)
        return credentials if all(credentials.has(n) for n in needed) else None

    async def start(self, url: str) -> None:
        tls = client_context(self._config.nats.tls)
        self._nc = await connect(
            url, "promptbus-auth", self._credentials.login(Role.AUTH).over(tls)
        )
        self._system = await connect(
            url, "promptbus-auth-system", self._credentials.login(Role.SYSTEM).over(tls)
        )
        self._sub = await self._nc.subscribe(
            AUTH_REQUESTS,
            queue=f"promptbus-auth-{self._config.nats.subject_prefix}",
            cb=self._on_request,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        await cancel_and_wait(self._sweeper)
        for nc in (self._nc, self._system):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()

    # ------------------------------------------------------------ logins

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply or self._nc is None:
            return
        try:
            request = jwt.decode(msg.data.decode())
            facts = request["nats"]
            user_nkey: str = facts["user_nkey"]
            server_id: str = facts["server_id"]["id"]
        except (jwt.InvalidJWT, KeyError, TypeError, UnicodeDecodeError):
            log.warning("auth callout: an authorization request that is not the server's")
            return
        options = facts.get("connect_opts") or {}
        secret = options.get("auth_token") or options.get("pass") or ""
        user_jwt = self._admit(secret, user_nkey, server_id, facts.get("client_info"))
        NATS_LOGINS.labels(outcome="refused" if user_jwt is None else "admitted").inc()
        if user_jwt is None:
            # Refused a moment later: another broker on the same server (another subject
            # prefix) may know the key, and the server takes the first answer.
            await asyncio.sleep(REFUSE_AFTER_S)
        error = None if user_jwt else "not a valid promptbus key (or a revoked one)"
        answer = jwt.response_claims(user_nkey, server_id, user_jwt, error)
        await self._nc.publish(msg.reply, jwt.encode(answer, self._issuer).encode())

    def _admit(self, secret: str, user_nkey: str, server_id: str, client: object) -> str | None:
        """The user JWT for a live key; None for anything else."""
        keys = self._admission.keys
        record = keys.lookup(secret) if secret else None
        if record is None:
            return None
        publish, subscribe = tenant_permissions(
            self._config, self._admission.allowed_models(secret), record.digest
        )
        user = jwt.user_claims(
            user_nkey,
            ACCOUNT,
            f"{record.tenant}/{record.id}",
            publish,
            subscribe,
            time.time() + LOGIN_TTL_S,
        )
        cid = client.get("id") if isinstance(client, dict) else None
        if isinstance(cid, int):
            self._logins[record.digest].add((server_id, cid))
        return jwt.encode(user, self._issuer)

    # ------------------------------------------------------------ revocation

    async def _sweep(self) -> None:
        """Disconnect the logins of keys that are no longer valid (revoked, rotated)."""
        keys = self._admission.keys
        while True:
            await asyncio.sleep(SWEEP_S)
            for key_digest in list(self._logins):
                if keys.by_digest(key_digest) is None:
                    for server_id, cid in self._logins.pop(key_digest):
                        await self._kick(server_id, cid)

    async def _kick(self, server_id: str, cid: int) -> None:
        if self._system is None:
            return
        subject = _KICK.format(server=subject_token(server_id))
        try:
            await self._system.request(subject, _encoder.encode({"cid": cid}), timeout=2.0)
        except Exception as exc:  # a server gone away took the connection with it
            log.info("auth callout: could not disconnect client %s on %s: %s", cid, server_id, exc)
