"""Load ``promptbus.yaml`` into the typed ``Config``, applying environment overrides.

An override is ``PROMPTBUS__<SECTION>__<KEY>=value`` (double underscores separate the
path, values are parsed as YAML scalars), e.g. ``PROMPTBUS__NATS__URL=nats://h:4222``
or ``PROMPTBUS__INGRESS__PORT=9000``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas.config import Config

ENV_PREFIX = "PROMPTBUS__"
DEFAULT_PATHS = ("promptbus.yaml", "promptbus.yml")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the bad key."""


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    source, raw = _read_yaml(path, env)
    _apply_env_overrides(raw, env)
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration in {source}: {exc}") from None


def _read_yaml(path: str | Path | None, env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    if path is None:
        path = env.get("PROMPTBUS_CONFIG")
    if path is None:
        path = next((p for p in DEFAULT_PATHS if Path(p).exists()), None)
    if path is None:
        raise ConfigError(
            "no configuration file: pass --config, set PROMPTBUS_CONFIG or create promptbus.yaml"
        )
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration {path} must be a mapping at the top level")
    return str(path), raw


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment override {name}: `{key}` is not a section")
            node = child
        node[keys[-1]] = yaml.safe_load(value) if value else None
