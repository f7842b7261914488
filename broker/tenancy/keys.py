"""Virtual API keys and tenants in the ``<prefix>_keys`` KV bucket.

Every ingress and worker follows the bucket into memory (``KeyStore.start``), so checking
a key on the request path is a SHA-256 and a dict lookup, and a revocation reaches every
process within milliseconds. Secrets are never stored: only their digest and a hint.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.nats.kvwatch import KVFollower
from broker.nats.subjects import name_token
from schemas.envelope import RequestMeta, Tenancy
from schemas.tenancy import (
    IssuedKey,
    KeyRecord,
    KeySpec,
    TeamRecord,
    TeamSpec,
    TenantRecord,
    TenantSpec,
    key_decoder,
    kv_token,
    team_decoder,
    tenant_decoder,
)

KEY_PREFIX = "sk-pb-"
_SECRET_ENTRY = "admission-secret"
_encoder = msgspec.json.Encoder()


def digest(secret: str) -> str:
    """Keys are random 256-bit strings: a plain SHA-256 is enough (no password hashing)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _tenant_entry(name: str) -> str:
    return "tenant." + name_token(name)


def _team_entry(tenant: str, name: str) -> str:
    return f"team.{kv_token(tenant)}.{name}"


class KeyStore:
    """The bucket's keys and tenants, followed live; writes go straight to the bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._by_digest: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self._tenants: dict[str, TenantRecord] = {}
        self._teams: dict[tuple[str, str], TeamRecord] = {}  # (tenant, team)
        self._follower = KVFollower(kv, self._apply)
        self.admission_secret = b""

    async def start(self) -> None:
        self.admission_secret = await self._shared_secret()
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def _shared_secret(self) -> bytes:
        """The MAC key with which ingresses vouch for requests they admitted: made once
        by whichever process comes first, then read by all."""
        try:
            await self._kv.create(_SECRET_ENTRY, secrets.token_bytes(32))
        except KeyWrongLastSequenceError:
            pass
        entry = await self._kv.get(_SECRET_ENTRY)
        assert entry.value is not None
        return entry.value

    def _apply(self, key: str, value: bytes | None, revision: int | None) -> None:
        kind, _, name = key.partition(".")
        if kind == "key":
            old = self._by_id.pop(name, None)
            if old is not None:
                self._by_digest.pop(old.digest, None)
            if value is not None:
                record = key_decoder.decode(value)
                self._by_id[record.id] = record
                self._by_digest[record.digest] = record
        elif kind == "team":
            if value is None:
                self._teams = {k: t for k, t in self._teams.items() if _team_entry(*k) != key}
            else:
                team = team_decoder.decode(value)
                self._teams[(team.tenant, team.name)] = team
        elif kind == "tenant":
            if value is None:
                self._tenants = {n: t for n, t in self._tenants.items() if _tenant_entry(n) != key}
            else:
                tenant = tenant_decoder.decode(value)
                self._tenants[tenant.name] = tenant

    # ------------------------------------------------------------ reads (request path)

    def lookup(self, secret: str) -> KeyRecord | None:
        record = self._by_digest.get(digest(secret))
        if record is None or record.revoked_at is not None:
            return None
        return record

    def by_digest(self, key_digest: str) -> KeyRecord | None:
        """The live key whose secret has this digest (None once revoked or rotated)."""
        record = self._by_digest.get(key_digest)
        return None if record is None or record.revoked_at is not None else record

    def tenant(self, name: str) -> TenantRecord | None:
        return self._tenants.get(name)

    def team(self, tenant: str, name: str) -> TeamRecord | None:
        return self._teams.get((tenant, name))

    def teams(self, tenant: str | None = None) -> list[TeamRecord]:
        return sorted(
            (t for t in self._teams.values() if tenant is None or t.tenant == tenant),
            key=lambda t: (t.tenant, t.name),
        )

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        records = sorted(self._by_id.values(), key=lambda r: r.created_at)
        return [r for r in records if tenant is None or r.tenant == tenant]

    def tenants(self) -> list[TenantRecord]:
        return sorted(self._tenants.values(), key=lambda t: t.name)

    def key(self, key_id: str) -> KeyRecord | None:
        return self._by_id.get(key_id)

    def sign(self, part: str, body: bytes) -> str:
        """The admission MAC over a request: keyed BLAKE2b (RFC 7693's keyed mode is a
        MAC by design) over its signed part and then its body, 128 bits in hex. One
        pass in C; HMAC-SHA256 over a SHA-256 of the body cost ~14 µs a metered
        request on each side, the ingress signing and the worker verifying."""
        mac = hashlib.blake2b(part.encode(), key=self.admission_secret, digest_size=16)
        mac.update(body)
        return mac.hexdigest()

    def verify(self, part: str, body: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(part, body), signature)

    def sign_tenancy(
        self, request_id: str, tenancy: Tenancy, reply_to: str | None, deadline_ms: int, body: bytes
    ) -> Tenancy:
        """The tenancy with its signature over this request: what a worker verifies
        instead of admitting the request again (``verify_tenancy``)."""
        signature = self.sign(tenancy.signed_part(request_id, reply_to, deadline_ms, body), body)
        return msgspec.structs.replace(tenancy, signature=signature)

    def verify_tenancy(self, meta: RequestMeta, body: bytes) -> bool:
        """Does the request's tenancy vouch for this request? Only with a deadline: an
        admission that never expires could be replayed for ever."""
        tenancy = meta.tenancy
        if tenancy is None or meta.deadline_ms is None:
            return False
        signed = tenancy.signed_part(meta.request_id, meta.reply_to, meta.deadline_ms, body)
        if self.verify(signed, body, tenancy.signature):
            return True
        return self._verify_hmac(meta, body)

    def _verify_hmac(self, meta: RequestMeta, body: bytes) -> bool:
        """The signature of the release before keyed BLAKE2b (HMAC-SHA256 over a SHA-256
        of the body), so that workers upgraded first still take what older ingresses
        admitted (docs/operations.md, "Upgrading"). Only a request that failed the
        current MAC pays it. Drop it one release on."""
        tenancy, deadline_ms = meta.tenancy, meta.deadline_ms
        assert tenancy is not None and deadline_ms is not None
        part = (
            f"{meta.request_id}|{tenancy.key_id}|{tenancy.tenant}|{tenancy.estimate}"
            f"|{tenancy.metered_value()}|{tenancy.hold_cost}|{tenancy.hold_tokens}"
            f"|{tenancy.team}|{tenancy.user}|{meta.reply_to or ''}|{deadline_ms}"
            f"|{hashlib.sha256(body).hexdigest()[:32]}"
        )
        expected = hmac.new(self.admission_secret, part.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected[:32], tenancy.signature)

    def vouch(self, meta: RequestMeta, body: bytes) -> RequestMeta:
        """The meta with its tenancy signed for this body (``BrokerClient.vouch``)."""
        if meta.tenancy is None or meta.deadline_ms is None:
            return meta
        tenancy = self.sign_tenancy(
            meta.request_id, meta.tenancy, meta.reply_to, meta.deadline_ms, body
        )
        return msgspec.structs.replace(meta, tenancy=tenancy)

    # ------------------------------------------------------------ writes (admin)

    async def create_key(self, spec: KeySpec) -> IssuedKey:
        secret = new_secret()
        hashed = digest(secret)
        record = KeyRecord(
            id="key_" + hashed[:12],
            digest=hashed,
            hint=f"{KEY_PREFIX}...{secret[-4:]}",
            tenant=spec.tenant,
            team=spec.team,
            name=spec.name,
            models=spec.models,
            limits=spec.limits,
            budgets=spec.budgets,
            transforms=spec.transforms,
            created_at=time.time(),
        )
        await self._put_key(record)
        if spec.tenant not in self._tenants:
            await self.set_tenant(spec.tenant, TenantSpec(), keep_existing=True)
        return IssuedKey(key=secret, record=record)

    async def rotate_key(self, key_id: str) -> IssuedKey | None:
        """A new secret for the same key (id, tenant, limits, usage): the old one stops
        working at once."""
        old = self._by_id.get(key_id) or await self._read_key(key_id)
        if old is None or old.revoked_at is not None:
            return None
        secret = new_secret()
        record = msgspec.structs.replace(
            old, digest=digest(secret), hint=f"{KEY_PREFIX}...{secret[-4:]}"
        )
        await self._put_key(record)
        return IssuedKey(key=secret, record=record)

    async def revoke_key(self, key_id: str) -> KeyRecord | None:
        old = self._by_id.get(key_id) or await self._read_key(key_id)
        if old is None:
            return None
        record = msgspec.structs.replace(old, revoked_at=old.revoked_at or time.time())
        await self._put_key(record)
        return record

    async def set_tenant(
        self, name: str, spec: TenantSpec, *, keep_existing: bool = False
    ) -> TenantRecord:
        record = TenantRecord(
            name=name,
            limits=spec.limits,
            budgets=spec.budgets,
            quota=spec.quota,
            models=spec.models,
            end_users=spec.end_users,
            created_at=time.time(),
        )
        entry = _tenant_entry(name)
        if keep_existing:
            try:
                await self._kv.create(entry, _encoder.encode(record))
            except KeyWrongLastSequenceError:
                pass
        else:
            await self._kv.put(entry, _encoder.encode(record))
        if keep_existing:
            return self._tenants.setdefault(name, record)
        self._tenants[name] = record
        return record

    async def set_team(self, tenant: str, name: str, spec: TeamSpec) -> TeamRecord:
        old = self._teams.get((tenant, name))
        record = TeamRecord(
            name=name,
            tenant=tenant,
            limits=spec.limits,
            budgets=spec.budgets,
            quota=spec.quota,
            models=spec.models,
            created_at=old.created_at if old is not None else time.time(),
        )
        value = _encoder.encode(record)
        await self._kv.put(_team_entry(tenant, name), value)
        self._teams[(tenant, name)] = record  # read-your-writes
        if tenant not in self._tenants:
            await self.set_tenant(tenant, TenantSpec(), keep_existing=True)
        return record

    async def _put_key(self, record: KeyRecord) -> None:
        await self._kv.put(f"key.{record.id}", _encoder.encode(record))
        self._apply(f"key.{record.id}", _encoder.encode(record), None)  # read-your-writes

    async def _read_key(self, key_id: str) -> KeyRecord | None:
        try:
            entry = await self._kv.get(f"key.{key_id}")
        except KeyNotFoundError:
            return None
        return key_decoder.decode(entry.value) if entry.value else None
