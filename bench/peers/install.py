"""The peers' installs, each in its own environment under ``.promptbus/bench/`` (never
the project's dependencies), at pinned versions; and the load tools (wrk, nginx) from
Debian's packages when the machine lacks them and allows it.

Each function returns what to run, or a sentence saying why the peer is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / ".promptbus" / "bench"
LITELLM_VERSION = "1.106.12"  # what issue 20's table measured
PORTKEY_VERSION = "1.15.2"  # @portkey-ai/gateway


def _run(command: list[str], log: Path) -> bool:
    with log.open("ab") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode == 0


def litellm() -> Path | str:
    """The ``litellm`` proxy command, in a venv of its own."""
    venv = ROOT / f"litellm-{LITELLM_VERSION}"
    command = venv / "bin" / "litellm"
    if command.exists():
        return command
    ROOT.mkdir(parents=True, exist_ok=True)
    log = ROOT / "litellm-install.log"
    python = venv / "bin" / "python"
    ok = _run([sys.executable, "-m", "venv", str(venv)], log) and _run(
        [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], log
    )
    if not ok or not command.exists():
        return f"pip could not install litellm[proxy]=={LITELLM_VERSION} (see {log})"
    return command


def portkey() -> Path | str:
    """The Portkey gateway's server script, run with the machine's node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    prefix = ROOT / f"portkey-{PORTKEY_VERSION}"
    script = prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    prefix.mkdir(parents=True, exist_ok=True)
    log = ROOT / "portkey-install.log"
    package = f"@portkey-ai/gateway@{PORTKEY_VERSION}"
    if not _run(
        ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", package], log
    ):
        return f"npm could not install {package} (see {log})"
    if not script.exists():
        return f"{package} has no build/start-server.js"
    return script


ECHO_MODULE = Path("/usr/share/nginx/modules/ngx_http_echo_module.so")


def nginx_echo_module() -> Path | None:
    """nginx's echo module (``echo_sleep``: an upstream that answers after a delay),
    installed from Debian's packages if missing and this user may; None otherwise."""
    if not ECHO_MODULE.exists():
        _apt_install("libnginx-mod-http-echo")
    return ECHO_MODULE if ECHO_MODULE.exists() else None


def debian_tool(name: str) -> str | None:
    """``name`` (wrk, nginx) on the PATH, installed from Debian's packages if missing and
    this user may; None when it cannot be had."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if not _apt_install(name):
        return None
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _apt_install(package: str) -> bool:
    """Install a Debian package (updating the lists once if the first try fails), when
    this user may; False when it cannot."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    ROOT.mkdir(parents=True, exist_ok=True)
    log = ROOT / "apt.log"
    return _run(["apt-get", "install", "-y", "-q", package], log) or (
        _run(["apt-get", "update", "-q"], log)
        and _run(["apt-get", "install", "-y", "-q", package], log)
    )
