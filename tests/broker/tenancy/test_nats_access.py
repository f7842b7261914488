"""The bus as a trust boundary: what a stranger, a tenant's service and each broker role
may do on NATS (issue 15), tried as the tester did, against a real nats-server.

Every attack must fail, and the legitimate paths (a plain nats-py service with its key,
the Python client) must keep working.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.client import BrokerClient
from broker.nats.credentials import Role, tenant_login
from schemas.envelope import Tenancy as Tenancy_
from schemas.errors import AuthenticationError
from schemas.settings import load_config
from tests import bus
from tests.broker.tenancy.test_tenancy import Tenancy, tenancy  # noqa: F401 (fixture)

REQUEST = {"model": "mock-gpt", "messages": [{"role": "user", "content": "on the bus"}]}


class Tenant:
    """A plain nats-py service logged in with its promptbus key, as docs/subjects.md says."""

    def __init__(self, nc: NATS, key: str, errors: list[str]) -> None:
        self.nc, self.key, self.errors = nc, key, errors

    @classmethod
    async def connect(cls, url: str, key: str) -> Tenant:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        login = tenant_login(key)
        nc = await nats.connect(
            url, inbox_prefix=login.inbox_prefix, error_cb=on_error, **login.options
        )
        return cls(nc, key, errors)

    async def ask(self, subject: str, body: dict[str, Any], **headers: str) -> Msg:
        """A request on the documented contract: JetStream publish, reply on our inbox."""
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, max_msgs=1)
        await self.nc.jetstream().publish(
            subject,
            json.dumps(body).encode(),
            headers={
                "Pb-Reply-To": inbox,
                "Authorization": f"Bearer {self.key}",
                "Nats-Msg-Id": f"t-{time.monotonic_ns()}",
                **headers,
            },
            timeout=5,
        )
        return await sub.next_msg(timeout=15)


@pytest.fixture
async def service(tenancy: Tenancy) -> AsyncIterator[Tenant]:  # noqa: F811
    key = tenancy.create_key(tenant="svc-a", models=["other-model"])
    tenant = await Tenant.connect(tenancy.nats_url, key)
    try:
        yield tenant
    finally:
        await tenant.nc.close()


async def _refused(coro: Any) -> bool:
    """Did the server refuse it (permission violation: no answer, or an error)?"""
    try:
        await asyncio.wait_for(coro, 3)
    except Exception:
        return True
    return False


async def test_a_stranger_without_credentials_cannot_connect(tenancy: Tenancy) -> None:  # noqa: F811
    with pytest.raises(Exception):  # noqa: B017 (any refusal: auth violation or timeout)
        nc = await nats.connect(
            tenancy.nats_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5
        )
        await nc.flush(timeout=5)
        await nc.jetstream().key_value("tn_keys")


async def test_a_wrong_key_cannot_connect(tenancy: Tenancy) -> None:  # noqa: F811
    config = load_config(tenancy.config)
    with pytest.raises(AuthenticationError):
        await BrokerClient.connect(config, tenancy.nats_url, api_key="sk-pb-forged")


async def test_a_tenant_service_gets_answers_for_its_models_only(service: Tenant) -> None:
    reply = await service.ask("tn.chat.other-model", {**REQUEST, "model": "other-model"})
    assert reply.headers is not None and reply.headers.get("Pb-Status", "200") == "200"
    assert json.loads(reply.data)["choices"][0]["message"]["content"] == "mock reply to: on the bus"
    assert await _refused(service.ask("tn.chat.mock-gpt", REQUEST))  # not its model
    assert any("permissions violation" in e.lower() for e in service.errors), service.errors


async def test_a_tenant_service_reads_no_secrets_files_or_usage(service: Tenant) -> None:
    js = service.nc.jetstream()
    assert await _refused(js.key_value("tn_keys"))  # the admission secret lives there
    assert await _refused(js.object_store("tn_files"))
    assert await _refused(js.key_value("tn_ratelimits"))
    assert await _refused(js.stream_info("TN_REQ_USAGE"))
    assert await _refused(js.get_msg("TN_REQ", 1))  # queued prompts


async def test_a_tenant_service_cannot_listen_to_prompts_or_replies(
    tenancy: Tenancy,  # noqa: F811
    service: Tenant,
) -> None:
    heard: list[str] = []

    async def listen(msg: Msg) -> None:
        heard.append(msg.subject)

    for subject in ("tn.chat.>", "_INBOX.>", "_INBOX_ingress.>", "_INBOX_tenant.>", ">"):
        await service.nc.subscribe(subject, cb=listen)
    other = tenancy.create_key(tenant="svc-b")
    assert tenancy.chat(other, text="private to b").status_code == 200
    await asyncio.sleep(0.5)
    assert heard == []
    assert sum("permissions violation" in e.lower() for e in service.errors) >= 5


async def test_forged_admission_headers_are_not_trusted(service: Tenant) -> None:
    """Admission headers claiming another tenant (or one that does not exist), with a
    made-up signature: the worker checks the request's own key instead."""
    forged = {
        "Pb-Tenant": "ghost",
        "Pb-Key-Id": "key_000000000000",
        "Pb-Metered": "0",
        "Pb-Admission": "0" * 32,
    }
    reply = await service.ask("tn.chat.other-model", {**REQUEST, "model": "other-model"}, **forged)
    assert reply.headers is not None and reply.headers.get("Pb-Status", "200") == "200"
    # Answered as its own tenant: without its key the request is refused.
    inbox = service.nc.new_inbox()
    sub = await service.nc.subscribe(inbox, max_msgs=1)
    await service.nc.jetstream().publish(
        "tn.chat.other-model",
        json.dumps({**REQUEST, "model": "other-model"}).encode(),
        headers={"Pb-Reply-To": inbox, "Nats-Msg-Id": f"f-{time.monotonic_ns()}", **forged},
    )
    refused = await sub.next_msg(timeout=15)
    assert refused.headers is not None and refused.headers.get("Pb-Status") == "401"


async def test_a_revoked_key_loses_its_nats_connection_within_seconds(
    tenancy: Tenancy,  # noqa: F811
) -> None:
    key = tenancy.create_key(tenant="svc-c")
    tenant = await Tenant.connect(tenancy.nats_url, key)
    try:
        await tenant.nc.flush()
        key_id = "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]
        assert tenancy.admin("DELETE", f"/admin/keys/{key_id}").status_code in (200, 204)
        revoked = time.monotonic()
        while tenant.nc.is_connected and time.monotonic() - revoked < 10:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        assert not tenant.nc.is_connected, "still connected 10 s after the revocation"
        await asyncio.sleep(1.5)  # its reconnects are refused: the key is no longer valid
        assert not tenant.nc.is_connected
    finally:
        await tenant.nc.close()


async def test_each_broker_role_keeps_to_its_own(tenancy: Tenancy) -> None:  # noqa: F811
    """The ingress cannot take work off the queue; a worker cannot read files; nobody
    but the auth service hears tenants' logins (which carry their keys)."""
    ingress = await bus.connect(tenancy.nats_url, Role.INGRESS)
    worker = await bus.connect(tenancy.nats_url, Role.WORKER)
    try:
        ijs = ingress.jetstream()
        assert await _refused(ijs.pull_subscribe("tn.chat.>", durable="thief", stream="TN_REQ"))
        assert await _refused(worker.jetstream().object_store("tn_files"))
        heard: list[bytes] = []

        async def listen(msg: Msg) -> None:
            heard.append(msg.data)

        for role_nc in (ingress, worker):
            await role_nc.subscribe("$SYS.REQ.USER.AUTH", cb=listen)
            await role_nc.flush()
        tenant = await Tenant.connect(tenancy.nats_url, tenancy.create_key(tenant="svc-d"))
        await tenant.nc.close()
        assert heard == []
    finally:
        await ingress.close()
        await worker.close()


async def test_sniffed_admission_vouches_for_no_other_request(
    tenancy: Tenancy,  # noqa: F811
    service: Tenant,
) -> None:
    """Admission headers as an ingress signs them (for one body, reply subject and
    deadline), replayed with another body or after their deadline: refused (401)."""
    admin = await bus.connect(tenancy.nats_url)
    try:
        entry = await (await admin.jetstream().key_value("tn_keys")).get("admission-secret")
        secret = entry.value
    finally:
        await admin.close()
    assert secret

    def signed(request_id: str, reply: str, deadline_ms: int, body: bytes) -> dict[str, str]:
        owner = Tenancy_(key_id="key_000000000000", tenant="svc-a")
        part = owner.signed_part(request_id, reply, deadline_ms, body)
        mac = hashlib.blake2b(part.encode(), key=secret, digest_size=16)
        mac.update(body)
        signature = mac.hexdigest()
        return msgspec.structs.replace(owner, signature=signature).to_headers()

    async def send(body: bytes, deadline_ms: int, signed_body: bytes) -> str:
        inbox = service.nc.new_inbox()
        sub = await service.nc.subscribe(inbox, max_msgs=1)
        rid = f"replay-{time.monotonic_ns()}"
        headers = {
            "Pb-Reply-To": inbox,
            "Pb-Request-Id": rid,
            "Pb-Deadline": str(deadline_ms),
            "Nats-Msg-Id": rid,
            **signed(rid, inbox, deadline_ms, signed_body),
        }
        await service.nc.jetstream().publish("tn.chat.other-model", body, headers=headers)
        reply = await sub.next_msg(timeout=15)
        assert reply.headers is not None
        return reply.headers.get("Pb-Status", "200")

    body = json.dumps({**REQUEST, "model": "other-model"}).encode()
    later = int(time.time() * 1000) + 60_000
    assert await send(body, later, body) == "200"  # as signed: vouched for
    other = json.dumps({**REQUEST, "model": "other-model", "max_tokens": 999}).encode()
    assert await send(other, later, body) == "401"  # another body
    same_size = body.replace(b"on the bus", b"on the BUS")
    assert len(same_size) == len(body)
    assert await send(same_size, later, body) == "401"  # another body of the same length
    assert await send(body, int(time.time() * 1000) - 1, body) in ("401", "504")  # expired
