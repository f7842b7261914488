"""The test suite's NATS logins: one credentials directory for every server a test starts.

Servers started here require logins as in production (``nats.auth`` on); tests connect
with a role's seed through ``connect`` instead of anonymously.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from broker.nats.credentials import Credentials, Role
from broker.nats.subjects import Subjects

CREDENTIALS = Credentials.create(
    Path(tempfile.gettempdir()) / f"promptbus-test-credentials-{os.getuid()}"
)
# The brokers the shared test server carries (subject prefix, stream): its permissions
# name their streams and buckets.
BROKERS = [
    Subjects(),
    Subjects("fz", "FZ_REQ"),
    Subjects("tn", "TN_REQ"),
    Subjects("lanes", "LANES"),
    Subjects("al", "AL_REQ"),
]


def config_section() -> dict[str, str]:
    """What a test config's ``nats`` section adds for its processes to log in."""
    return {"credentials_dir": str(CREDENTIALS.directory)}


def environment() -> dict[str, str]:
    """The same, as environment overrides of a process's config."""
    return {"PROMPTBUS__NATS__CREDENTIALS_DIR": str(CREDENTIALS.directory)}


async def connect(url: str, role: Role = Role.ADMIN, **options: object) -> NATS:
    """A plain nats-py connection logged in as ``role``."""
    return await nats.connect(url, **CREDENTIALS.login(role).nats_options(), **options)
