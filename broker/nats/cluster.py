"""The compose.yaml topology as local processes: ``promptbus cluster`` / ``make cluster``.

Three nats-servers from the wheel clustered on loopback (JetStream R3), the mock upstream,
one worker pool per model (two providers: the in-process mock and an OpenAI-compatible
upstream), the batcher and two ingress replicas sharing one port (SO_REUSEPORT). Every
part is a child process with its own log, so a test can SIGKILL any one of them and watch
the rest cope.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from broker.nats.embedded import EmbeddedCluster, _set_parent_death_signal, free_port
from broker.nats.subjects import Subjects
from schemas.settings import load_config

PROMPTBUS = [sys.executable, "-m", "cli.main", "--log-format", "text"]
UPSTREAM_KEY_ENV = "PB_CLUSTER_UPSTREAM_KEY"


class Child:
    """One promptbus process; output to ``log``; dies with its parent."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.args, self.log, self.env = name, args, log, env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with open(self.log, "ab") as output:
            self.popen = subprocess.Popen(
                self.args,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                preexec_fn=_set_parent_death_signal,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.popen is not None and self.alive():
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class LocalCluster:
    """NATS R3 cluster + mock upstream + worker pools + ingress replicas."""

    def __init__(
        self,
        config_path: str | Path,
        store: Path,
        *,
        ingress_port: int = 0,
        ingresses: int = 2,
        nats_nodes: int = 3,
        worker_models: list[list[str]] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.store = store.resolve()
        self.store.mkdir(parents=True, exist_ok=True)
        self.upstream_port = free_port()
        self.config_path = self._render(Path(config_path))
        config = load_config(self.config_path, env={})
        self.nats = EmbeddedCluster(
            self.store / "nats",
            size=nats_nodes,
            log_dir=self.store,
            max_payload=config.nats.max_payload_bytes,
            brokers=[Subjects.of(config)],
            tls=config.nats.tls,
        )
        self.ingress_port = ingress_port or free_port()
        self.ingress_count = ingresses
        self.worker_models = worker_models or [[m.model_name] for m in config.model_list]
        self.env = {
            "PROMPTBUS__NATS__URL": self.nats.url,
            "PROMPTBUS__NATS__REPLICAS": str(min(3, nats_nodes)),
            **(
                {"PROMPTBUS__NATS__CREDENTIALS_DIR": str(self.nats.credentials.directory)}
                if self.nats.credentials
                else {}
            ),
            UPSTREAM_KEY_ENV: "sk-cluster-upstream",
            **(extra_env or {}),
        }
        self.upstream: Child | None = None
        self.workers: list[Child] = []
        self.ingresses: list[Child] = []
        self.batcher: Child | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def _child(self, name: str, args: list[str]) -> Child:
        return Child(name, [*PROMPTBUS, *args], self.store / f"{name}.log", self.env)

    def start(self, timeout: float = 60.0) -> LocalCluster:
        self.store.mkdir(parents=True, exist_ok=True)
        try:
            self.nats.start()
            self.upstream = self._child(
                "upstream",
                [
                    "mock-upstream",
                    "--port",
                    str(self.upstream_port),
                    "--api-key",
                    self.env[UPSTREAM_KEY_ENV],
                ],
            ).start()
            _wait_port(self.upstream_port, self.upstream, timeout)
            for models in self.worker_models:
                self.start_worker(models, wait=timeout)
            self.start_batcher(wait=timeout)
            for index in range(self.ingress_count):
                self.ingresses.append(
                    self._child(
                        f"ingress-{index}",
                        [
                            "ingress",
                            "-c",
                            str(self.config_path),
                            "--reuse-port",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(self.ingress_port),
                        ],
                    ).start()
                )
                _wait_log(self.ingresses[-1], "ingress on ", timeout)
                _wait_ready(f"{self.base_url}/readyz", self.ingresses[-1], timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _render(self, source: Path) -> Path:
        """The config with ``${UPSTREAM_URL}`` pointing at this cluster's mock upstream."""
        text = source.read_text().replace(
            "${UPSTREAM_URL}", f"http://127.0.0.1:{self.upstream_port}/v1"
        )
        rendered = self.store / "promptbus.yaml"
        rendered.write_text(text)
        return rendered

    def start_worker(self, models: list[str], wait: float | None = None) -> Child:
        """Another worker pool process for ``models``: scaling out is starting one more.
        ``wait``: seconds to wait until it serves (start-up is one process at a time, so
        a fresh cluster is not asked to create the same R3 streams by all at once)."""
        name = f"worker-{len(self.workers)}"
        args = ["worker", "-c", str(self.config_path), *(a for m in models for a in ("--model", m))]
        worker = self._child(name, args).start()
        self.workers.append(worker)
        if wait:
            _wait_log(worker, " serving ", wait)
        return worker

    def start_batcher(self, wait: float | None = None) -> Child:
        """The process that runs bulk batches (issue 5); one is enough, more may run."""
        self.batcher = self._child("batcher", ["batcher", "-c", str(self.config_path)]).start()
        if wait:
            _wait_log(self.batcher, "batcher running", wait)
        return self.batcher

    def stop(self) -> None:
        for child in [*self.ingresses, *self.workers, *([self.batcher] if self.batcher else [])]:
            child.stop()
        if self.upstream is not None:
            self.upstream.stop()
        self.nats.stop()

    def describe(self) -> str:
        return (
            f"promptbus cluster up (R3): NATS {self.nats.url}\n"
            f"ingress x{len(self.ingresses)} on {self.base_url} (SO_REUSEPORT)\n"
            f"workers: {', '.join('+'.join(m) for m in self.worker_models)}; batcher\n"
            f"logs and stores: {self.store}\nCtrl-C stops everything."
        )


def _wait_port(port: int, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{child.name} did not listen on {port}")


def _wait_log(child: Child, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in child.output():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} did not log {text!r} in {timeout}s")
        time.sleep(0.05)


def _wait_ready(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.output()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready in {timeout}s:\n{child.output()}")
