"""What the ingress's lifespan opens, read by every handler through ``request.state``
(Starlette's lifespan state) instead of closures over module-level dicts."""

from __future__ import annotations

import os
from dataclasses import dataclass

from starlette.requests import Request

from broker.batches.store import BatchStore
from broker.client import BrokerClient
from broker.experiments.traffic import Experiments
from broker.nats.provision import StreamKind, ensure_stream
from broker.nats.subjects import Subjects
from broker.observability import otel
from broker.responses.store import ResponseStore
from broker.tenancy.admission import Admission, bearer
from broker.tenancy.nats_access import NatsAccess
from broker.tenancy.usage import UsageRecorder
from ingress.http_io import header
from ingress.watch import Watch
from schemas.config import Config


@dataclass(slots=True)
class Services:
    config: Config
    client: BrokerClient
    admission: Admission
    batches: BatchStore
    admin_key: str | None  # the admin API's key (admin.api_key_env); None: admin API off
    responses: ResponseStore
    nats_access: NatsAccess | None = None  # tenants' NATS logins, where this has the keys
    experiments: Experiments | None = None  # None: the config splits no alias
    recorder: UsageRecorder | None = None  # spend records of cache hits, variant counters
    watch: Watch | None = None  # telemetry, charts and alerts

    @classmethod
    async def open(cls, config: Config, client: BrokerClient) -> Services:
        otel.start(config.otel, "ingress")
        admission = await Admission.open(client.nc, config)
        await ensure_stream(client.js, config, Subjects.of(config), StreamKind.SPEND)
        recorder = UsageRecorder(client.nc, config.nats.subject_prefix)
        recorder.start()
        found = cls(
            config=config,
            client=client,
            admission=admission,
            batches=await BatchStore.open(client.js, config),
            admin_key=os.environ.get(config.admin.api_key_env) or None,
            responses=await ResponseStore.open(client.js, config),
            experiments=await Experiments.open(client.nc, config, recorder),
            recorder=recorder,
        )
        found.watch = await Watch.open(config, client, admission)
        client.vouch = admission.keys.vouch
        client.unqueued = admission.release
        credentials = NatsAccess.available(config)
        if credentials is not None and client.url is not None:
            found.nats_access = NatsAccess(config, admission, credentials)
            await found.nats_access.start(client.url)
        return found

    async def close(self) -> None:
        if self.watch is not None:
            await self.watch.close()
        if self.experiments is not None:
            await self.experiments.close()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.nats_access is not None:
            await self.nats_access.stop()
        await self.admission.close()
        otel.shutdown()


def services(request: Request) -> Services:
    """The lifespan's services, as the request sees them."""
    # the scope's dict, not ``request.state``: its property and ``State.__getattr__``
    # cost more than the lookup, on a path that asks a dozen times a request
    found: Services = request.scope["state"]["services"]
    return found


def api_key(request: Request) -> str | None:
    """The caller's key: ``Authorization: Bearer`` (openai SDK) or ``api-key`` (Azure's)."""
    return bearer(header(request, "authorization")) or header(request, "api-key") or None


def tenant_of(request: Request) -> str | None:
    """The tenant owning the caller's key (401 for a refused key; None without auth):
    files and batches belong to it, and another tenant's are not found."""
    owner = services(request).admission.owner(api_key(request))
    return owner[1] if owner else None
