"""Command-line options shared by every command that talks to NATS."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def connection_options(
    parser: argparse.ArgumentParser, *, nats: bool = True, leaf: bool = False
) -> None:
    """``--config/-c`` and ``--nats-url``. On a sub-sub-command (``leaf``) they may come
    after its name too (``promptbus batch submit F -c X``); there they default to
    SUPPRESS so that, when absent, the value given before the name stands."""
    default = argparse.SUPPRESS if leaf else None
    parser.add_argument(
        "--config", "-c", default=default, help="YAML config (default promptbus.yaml)"
    )
    if nats:
        parser.add_argument(
            "--nats-url", default=default, help="external NATS URL (overrides nats.url)"
        )


def leaf_command(subcommands: Any, name: str, action: Any, help: str) -> argparse.ArgumentParser:
    """A sub-sub-command (``promptbus alerts list``) running ``action``, which also takes
    the connection options after its name."""
    parser: argparse.ArgumentParser = subcommands.add_parser(name, help=help, description=help)
    parser.set_defaults(action=action)
    connection_options(parser, leaf=True)
    return parser


API_KEY_ENV = "PROMPTBUS_API_KEY"


def api_key_option(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """``--api-key``: the virtual key a client command acts with when auth.required."""
    parser.add_argument(
        "--api-key",
        default=argparse.SUPPRESS if leaf else None,
        help=f"virtual key when auth.required is on (default: ${API_KEY_ENV}, else the "
        "demo key `make run` printed, from .promptbus/demo-key)",
    )


def resolve_api_key(given: str | None, demo_key_file: Path) -> str | None:
    """The key a client command uses: given, else ``$PROMPTBUS_API_KEY``, else the demo
    key of this machine's ``make run`` (so the README's commands work as written)."""
    if given:
        return given
    from_env = os.environ.get(API_KEY_ENV)
    if from_env:
        return from_env
    try:
        return demo_key_file.read_text().strip() or None
    except OSError:
        return None
