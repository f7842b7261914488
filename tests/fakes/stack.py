"""The fake providers in the session's test stack: one server each, and the model aliases
and transform profiles that route to them (added to the stack's promptbus.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fakes import anthropic, azure, gemini
from tests.fakes.server import FakeUpstream, ThreadedServer

KEYS = {
    "PB_TEST_ANTHROPIC_KEY": "sk-ant-stack",
    "PB_TEST_GEMINI_KEY": "AIza-stack",
    "PB_TEST_AZURE_KEY": "azure-stack",
}
CHAT_MODELS = ["claude", "gemini-flash", "azure-gpt", "branded"]
EMBEDDING_MODELS = ["embed-mock", "embed-gemini", "embed-openai"]


@dataclass
class Fakes:
    anthropic: FakeUpstream
    gemini: FakeUpstream
    azure: FakeUpstream
    servers: list[ThreadedServer]

    @classmethod
    def start(cls) -> Fakes:
        fakes = cls(
            FakeUpstream(KEYS["PB_TEST_ANTHROPIC_KEY"]),
            FakeUpstream(KEYS["PB_TEST_GEMINI_KEY"]),
            FakeUpstream(KEYS["PB_TEST_AZURE_KEY"]),
            [],
        )
        for module, fake in (
            (anthropic, fakes.anthropic),
            (gemini, fakes.gemini),
            (azure, fakes.azure),
        ):
            fakes.servers.append(ThreadedServer(module.create_app(fake)).start())
        return fakes

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def models(self, upstream: str) -> list[dict[str, Any]]:
        anthropic_url, gemini_url, azure_url = (s.url for s in self.servers)
        quiet = {"retry": {"max_attempts": 1}, "breaker": {"failure_threshold": 1000}}
        return [
            {
                "model_name": "claude",
                "deployments": [
                    {
                        "provider": "anthropic",
                        "name": "claude-main",
                        "base_url": anthropic_url,
                        "api_key_env": "PB_TEST_ANTHROPIC_KEY",
                        "model": "claude-sonnet-4-5",
                        **quiet,
                    }
                ],
            },
            {
                "model_name": "gemini-flash",
                "deployments": [
                    {
                        "provider": "gemini",
                        "base_url": gemini_url,
                        "api_key_env": "PB_TEST_GEMINI_KEY",
                        "model": "gemini-2.5-flash",
                        **quiet,
                    }
                ],
            },
            {
                "model_name": "azure-gpt",
                "deployments": [
                    {
                        "provider": "azure",
                        "base_url": azure_url,
                        "api_key_env": "PB_TEST_AZURE_KEY",
                        "api_version": "2024-10-21",
                        "model": "prod-gpt4o",
                        **quiet,
                    }
                ],
            },
            {
                "model_name": "branded",
                "transforms": ["safety", "brand"],
                "deployments": [
                    {
                        "provider": "azure",
                        "name": "branded-azure",
                        "base_url": azure_url,
                        "api_key_env": "PB_TEST_AZURE_KEY",
                        "api_version": "2024-10-21",
                        "model": "branded-gpt4o",
                        **quiet,
                    }
                ],
            },
            {
                "model_name": "embed-mock",
                "mode": "embeddings",
                "deployments": [{"provider": "mock"}],
            },
            {
                "model_name": "embed-gemini",
                "mode": "embeddings",
                "deployments": [
                    {
                        "provider": "gemini",
                        "base_url": gemini_url,
                        "api_key_env": "PB_TEST_GEMINI_KEY",
                        "model": "gemini-embedding-001",
                        **quiet,
                    }
                ],
            },
            {
                "model_name": "embed-openai",
                "mode": "embeddings",
                "deployments": [
                    {
                        "provider": "openai",
                        "base_url": f"{upstream}/v1",
                        "model": "text-embedding-3-small",
                        **quiet,
                    }
                ],
            },
        ]

    def add_to(self, config_path: Path, upstream: str) -> list[str]:
        """Add the fake providers' models and profiles; the model names to wait for."""
        config = yaml.safe_load(config_path.read_text())
        config["model_list"].extend(self.models(upstream))
        config["transforms"] = {
            "safety": {
                "system_prompt": "You are a careful assistant.",
                "cap": {"temperature": 0.8, "max_tokens": 64},
                "strip": ["logit_bias"],
            },
            "brand": {
                "metadata": {"tenant": "acme"},
                "response_model": "acme-chat",
                "response_deployment": "acme",
            },
        }
        config_path.write_text(yaml.safe_dump(config))
        return CHAT_MODELS
