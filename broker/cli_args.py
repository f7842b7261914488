"""Command-line options shared by every command that talks to NATS."""

from __future__ import annotations

import argparse


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
