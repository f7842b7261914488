"""What each broker role may publish and subscribe to: nats-server permission blocks.

Every role starts from "everything in the account" and loses what it must not touch.
The rules name streams and buckets, so they are made for the brokers (subject prefix and
stream name) a server carries. The lines that matter:

- only the auth service sees ``$SYS.REQ.USER.AUTH``: its requests carry tenants' keys;
- nobody but a worker consumes a work queue; the ingress and batcher publish to it;
- a worker reads neither the files, the batches nor the stored responses; only the
  auth service, ingress, worker and batcher read the keys bucket (its digests and the
  admission secret);
- each role reads only its own inboxes (``_INBOX_<role>``): nobody reads another
  caller's replies, and tenants' inboxes (``_INBOX_tenant.<digest>``) are theirs alone.

Tenants' permissions are an allow-list made per key, in ``broker/tenancy/nats_access.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.nats.credentials import TENANT_INBOXES, Role, inbox_prefix
from broker.nats.subjects import BATCHES, FILES, RATELIMITS, RESPONSES, Subjects, bucket

AUTH_REQUESTS = "$SYS.REQ.USER.AUTH"


def stream_api(stream: str) -> list[str]:
    """Every JetStream API subject that names ``stream`` (info, get, consumers, ...)."""
    return [
        f"$JS.API.*.*.{stream}",
        f"$JS.API.*.*.{stream}.>",
        f"$JS.API.*.*.*.{stream}",
        f"$JS.API.*.*.*.{stream}.>",
    ]


def consuming(stream: str) -> list[str]:
    """What pulling requests from ``stream`` and acking them takes."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
    ]


def _kv(prefix: str, kind: str) -> list[str]:
    name = bucket(prefix, kind)
    return [*stream_api(f"KV_{name}"), f"$KV.{name}.>"]


def _files(prefix: str) -> list[str]:
    name = bucket(prefix, FILES)
    return [*stream_api(f"OBJ_{name}"), f"$O.{name}.>"]


def _queues(subjects: Subjects) -> list[str]:
    return [
        subjects.chat_wildcard,
        subjects.embed_wildcard,
        subjects.dep_wildcard,
        subjects.bulk_wildcard,
    ]


def _denied(role: Role, brokers: Iterable[Subjects]) -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects ``role`` is refused."""
    pub: list[str] = []
    sub: list[str] = [] if role is Role.AUTH else ["$SYS.>"]
    if role is not Role.ADMIN:
        sub += ["_INBOX.>", f"{TENANT_INBOXES}.>"]
        sub += [f"{inbox_prefix(other)}.>" for other in Role if other is not role]
    for subjects in brokers:
        p = subjects.prefix
        queues = [subjects.stream, subjects.bulk_stream]
        if role in (Role.INGRESS, Role.BATCHER, Role.AUTH):
            pub += [rule for q in queues for rule in consuming(q)]
            sub += _queues(subjects)
        if role is Role.WORKER:
            for rules in (_files(p), _kv(p, BATCHES), _kv(p, RESPONSES)):
                pub += rules
                sub += rules
        if role is Role.AUTH:
            for rules in (_files(p), _kv(p, BATCHES), _kv(p, RATELIMITS), _kv(p, RESPONSES)):
                pub += rules
                sub += rules
            pub += stream_api(subjects.usage_stream)
            sub.append(subjects.usage_wildcard)
    return pub, sub


def role_permissions(role: Role, brokers: Iterable[Subjects]) -> dict[str, Any]:
    """The ``permissions`` block of one role's user in the server config."""
    pub_deny, sub_deny = _denied(role, list(brokers))
    pub: dict[str, Any] = {"allow": [">"]}
    sub: dict[str, Any] = {"allow": [">"]}
    if pub_deny:
        pub["deny"] = pub_deny
    if sub_deny:
        sub["deny"] = sub_deny
    return {"publish": pub, "subscribe": sub}
