"""TLS on the bus (``nats.tls``): `promptbus up` serves it, every broker process and a
tenant's service speak it, and a client without it (or, with ``verify_clients``,
without a certificate) is turned away. Certificates come from a throwaway CA (trustme)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import nats
import pytest
import trustme
import yaml

from broker.client import BrokerClient
from broker.nats.credentials import Role, login_for
from broker.nats.embedded import free_port
from broker.nats.tls import client_context
from schemas.config import NatsTlsConfig
from schemas.settings import load_config
from tests import bus
from tests.procs import PROMPTBUS, Proc, wait_http


def _certificates(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate: the files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("promptbus-client")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client.private_key_pem.write_to_path(str(paths["ckey"]))
    return {
        "ca_file": str(paths["ca"]),
        "cert_file": str(paths["cert"]),
        "key_file": str(paths["key"]),
        "client_cert_file": str(paths["ccert"]),
        "client_key_file": str(paths["ckey"]),
        "verify_clients": True,
    }


async def _refused(url: str, **options: object) -> bool:
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3, **options
        )
    except Exception:
        return True
    await nc.close()
    return False


async def test_up_over_mutual_tls(tmp_path: Path) -> None:
    tls = _certificates(tmp_path)
    port, nats_port = free_port(), free_port()
    config_path = tmp_path / "tls.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "nats": {
                    "port": nats_port,
                    "store_dir": str(tmp_path / "store"),
                    "tls": tls,
                    **bus.config_section(),
                },
                "ingress": {"port": port},
                "auth": {"required": True},
                "model_list": [{"model_name": "mock-gpt", "deployments": [{"provider": "mock"}]}],
            }
        )
    )
    config = load_config(config_path)
    url = f"nats://127.0.0.1:{nats_port}"
    up = Proc([*PROMPTBUS, "up", "-c", str(config_path)], tmp_path / "up.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", up)
        # The ingress, worker and batcher reached NATS over TLS: a request goes through.
        demo = up.output().split("demo API key (tenant demo): ", 1)[1].split()[0]
        chat = {"model": "mock-gpt", "messages": [{"role": "user", "content": "sealed"}]}
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=chat,
                headers={"Authorization": f"Bearer {demo}"},
            )
        assert response.json()["choices"][0]["message"]["content"] == "mock reply to: sealed"

        # The server says TLS is required before anything else is spoken.
        with socket.create_connection(("127.0.0.1", nats_port), timeout=3) as sock:
            assert b'"tls_required":true' in sock.recv(4096)

        admin = login_for(config, Role.ADMIN)
        assert "tls" in admin.options
        seed_only = bus.CREDENTIALS.login(Role.ADMIN).nats_options()
        assert await _refused(url, **seed_only)  # a valid seed, no TLS
        server_only = ssl.create_default_context(cafile=tls["ca_file"])
        assert await _refused(url, **seed_only, tls=server_only)  # no client certificate
        untrusted = ssl.create_default_context()  # the system's CAs do not know ours
        untrusted.load_cert_chain(tls["client_cert_file"], tls["client_key_file"])
        assert await _refused(url, **seed_only, tls=untrusted)
        nc = await nats.connect(url, **admin.nats_options())
        try:
            assert (await nc.jetstream().account_info()).streams >= 1
        finally:
            await nc.close()

        # A tenant's service: its key through the auth callout, over the same TLS.
        client = await BrokerClient.connect(config, url, api_key=demo)
        try:
            answer = await client.chat(chat)
            assert answer.choices[0].message.content == "mock reply to: sealed"
        finally:
            await client.close()
    finally:
        up.stop()


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="go together"):
        NatsTlsConfig(cert_file="server.pem")
    with pytest.raises(ValueError, match="ca_file"):
        NatsTlsConfig(verify_clients=True)
    assert client_context(None) is None
