"""Starting the real promptbus processes for tests, and waiting until they serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from broker.nats.embedded import die_with_parent

T = TypeVar("T")

PROMPTBUS = [sys.executable, "-m", "cli.main"]
ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A child process whose output goes to a log file, stopped by SIGTERM then SIGKILL."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._out = open(log, "ab")
        self.popen = subprocess.Popen(
            args,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=die_with_parent,  # a test run that dies leaves no process behind
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            code = self.popen.wait()
        self._out.close()
        return code


def wait_port(host: str, port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited early:\n{proc.output()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{proc.args} did not listen on {port}:\n{proc.output()}")


def wait_http(url: str, proc: Proc, timeout: float = 30.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.args} exited early:\n{proc.output()}")
        try:
            response = httpx.get(url, timeout=1)
            if response.status_code == status:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} not {status} in {timeout}s (last: {last}):\n{proc.output()}")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """``check()``'s first truthy answer, asked every 50 ms: waits exactly as long as the
    condition takes, instead of a fixed sleep before an assert."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
