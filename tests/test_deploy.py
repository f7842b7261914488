"""compose.yaml and its files can't run here (no Docker): check the topology they
describe instead, against the code they deploy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from broker.observability import metrics
from schemas.settings import load_config
from tests.procs import PROMPTBUS, ROOT

NODES = ["nats-1", "nats-2", "nats-3"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # anchors merged by PyYAML


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _promptbus_services(compose: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in compose["services"].items() if s.get("image") == "promptbus:latest"}


def test_three_nats_nodes_clustered_with_jetstream(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cluster_ports = set()
    for node in NODES:
        command = services[node]["command"]
        assert "--jetstream" in command
        assert _flag(command, "--name") == node
        assert _flag(command, "--cluster_name") == "promptbus"
        cluster_ports.add(_flag(command, "--cluster").rsplit(":", 1)[1])
        routes = {r.split("//")[1] for r in _flag(command, "--routes").split(",")}
        assert routes == {f"{other}:6222" for other in NODES if other != node}
        store = _flag(command, "--store_dir")
        assert any(v.endswith(f":{store}") for v in services[node]["volumes"])  # persistent
        assert node in compose["volumes"]
    assert cluster_ports == {"6222"}


def test_every_nats_node_requires_logins_and_carries_what_promptbus_expects(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The nodes read the config the one-shot ``credentials`` service writes (logins per
    role, the auth callout, and the max_payload promptbus.compose.yaml says), and every
    promptbus service logs in with the seeds from the same volume."""
    services = compose["services"]
    creds = services["credentials"]
    assert creds["command"][0] == "credentials"
    for node in NODES:
        service = services[node]
        assert _flag(service["command"], "-c") == "/credentials/nats-server.conf"
        assert "credentials:/credentials:ro" in service["volumes"]
        assert service["depends_on"]["credentials"]["condition"] == "service_completed_successfully"
    for name in ("worker-mock", "ingress-1", "ingress-2"):
        assert services[name]["environment"]["PROMPTBUS__NATS__CREDENTIALS_DIR"] == "/credentials"
        assert "credentials:/credentials:ro" in services[name]["volumes"]
    # What the service writes, run here with the compose config.
    env = {**os.environ, "PROMPTBUS__NATS__CREDENTIALS_DIR": str(tmp_path)}
    subprocess.run(
        [*PROMPTBUS, "credentials", "-c", str(ROOT / "deploy" / "promptbus.compose.yaml")],
        env=env,
        check=True,
        capture_output=True,
    )
    written = json.loads((tmp_path / "nats-server.conf").read_text())
    config = load_config(ROOT / "deploy" / "promptbus.compose.yaml", env={})
    assert written["max_payload"] == config.nats.max_payload_bytes
    assert written["authorization"]["auth_callout"]["account"] == "PROMPTBUS"
    assert (tmp_path / "worker.nk").stat().st_mode & 0o777 == 0o600


def test_promptbus_services_use_all_nodes_and_r3(compose: dict[str, Any]) -> None:
    services = _promptbus_services(compose)
    assert {"upstream", "worker-mock", "worker-upstream", "ingress-1", "ingress-2"} <= set(services)
    for name, service in services.items():
        if name == "credentials":  # the one-shot that writes the logins: no NATS yet
            continue
        env = service["environment"]
        assert env["PROMPTBUS__NATS__REPLICAS"] == "3", name
        urls = env["PROMPTBUS__NATS__URL"].split(",")
        assert urls == [f"nats://{node}:4222" for node in NODES], name
        config = load_config(ROOT / "deploy" / "promptbus.compose.yaml", env=env)
        assert config.nats.replicas == 3
        assert config.nats.url is not None and config.nats.url.count("nats://") == 3


def test_workers_serve_two_providers_from_the_config(compose: dict[str, Any]) -> None:
    config = load_config(ROOT / "deploy" / "promptbus.compose.yaml", env={})
    providers = {}
    for name in ("worker-mock", "worker-upstream"):
        command = compose["services"][name]["command"]
        model = config.model(_flag(command, "--model"))
        assert model is not None, name
        providers[name] = model.deployments[0].provider
        assert compose["services"][name]["deploy"]["replicas"] >= 2
    assert len(set(providers.values())) == 2
    upstream = config.model("upstream-gpt")
    assert upstream is not None and upstream.deployments[0].base_url is not None
    assert upstream.deployments[0].base_url.startswith("http://upstream:9090/")
    assert "9090" in compose["services"]["upstream"]["command"]


def test_published_port_balances_both_ingresses(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    assert lb["ports"] == ["8080:8080"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.findall(r"server (ingress-\d):8080", nginx) == ["ingress-1", "ingress-2"]
    assert "listen 8080" in nginx and "proxy_buffering off" in nginx  # SSE streams
    for ingress in ("ingress-1", "ingress-2"):
        command = compose["services"][ingress]["command"]
        assert command[0] == "ingress" and _flag(command, "--port") == "8080"
        assert compose["services"][ingress]["environment"]["PROMPTBUS__INGRESS__HOST"] == (
            "0.0.0.0"
        )


def test_prometheus_targets_match_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    ingress_targets = jobs["promptbus-ingress"]["static_configs"][0]["targets"]
    assert ingress_targets == ["ingress-1:8080", "ingress-2:8080"]
    workers = jobs["promptbus-worker"]["dns_sd_configs"][0]
    assert set(workers["names"]) == {"worker-mock", "worker-upstream"}
    for name in workers["names"]:
        env = services[name]["environment"]
        assert env["PROMPTBUS__WORKER__METRICS_PORT"] == str(workers["port"])
        assert env["PROMPTBUS__WORKER__METRICS_HOST"] == "0.0.0.0"
    for target in jobs["nats"]["static_configs"][0]["targets"]:
        host = target.split(":")[0]
        exporter = services[host]
        assert exporter["command"][-1] in {f"http://{n}:8222" for n in NODES}
    targets = jobs["nats"]["static_configs"][0]["targets"]
    exporters = {services[t.split(":")[0]]["command"][-1] for t in targets}
    assert exporters == {f"http://{n}:8222" for n in NODES}  # one per node
    for node in NODES:
        assert _flag(services[node]["command"], "--http_port") == "8222"


def test_grafana_dashboard_is_provisioned_and_queries_real_metrics(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"])
    provisioning = ROOT / mounts["./deploy/grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "deploy/grafana/provisioning"
    )
    providers = yaml.safe_load((provisioning / "dashboards" / "promptbus.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    dashboards_dir = next(src for src, dst in mounts.items() if dst == path)
    dashboard = json.loads((ROOT / dashboards_dir / "promptbus.json").read_text())
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    known = _registered()
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
    for expr in exprs:
        for name in re.findall(r"\b(promptbus_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            assert base in known, f"{name} is not a promptbus metric ({expr})"


def _registered() -> set[str]:
    """Names of the metrics in broker/observability/metrics.py (counters without ``_total``)."""
    return {v._name for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)}


def test_dockerfile_builds_the_cli_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11-slim" in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in found]
    assert "cli" in packages
    for package in packages:  # every package the wheel holds is in the image
        assert f"COPY {package} {package}" in dockerfile
    assert 'ENTRYPOINT ["promptbus"' in dockerfile
    assert "USER promptbus" in dockerfile
