"""Provider adapters: turn a validated OpenAI request into the provider's answer."""

from __future__ import annotations

import os

from schemas.config import DeploymentConfig
from workers.providers.anthropic import AnthropicProvider
from workers.providers.azure import AzureOpenAIProvider
from workers.providers.base import Provider
from workers.providers.gemini import GeminiProvider
from workers.providers.mock import MockProvider
from workers.providers.openai_compat import OpenAICompatProvider


class ProviderUnavailable(Exception):
    """A deployment that cannot be served by this worker (e.g. its API key is unset)."""


def make_provider(deployment: DeploymentConfig) -> Provider:
    if deployment.provider == "mock":
        return MockProvider(deployment)
    api_key = None
    if deployment.api_key_env:
        api_key = os.environ.get(deployment.api_key_env)
        if not api_key:
            raise ProviderUnavailable(
                f"deployment `{deployment.name}`: environment variable "
                f"{deployment.api_key_env} is not set"
            )
    if deployment.provider == "anthropic":
        return AnthropicProvider(deployment, api_key)
    if deployment.provider == "gemini":
        return GeminiProvider(deployment, api_key)
    if deployment.provider == "azure":
        return AzureOpenAIProvider(deployment, api_key)
    return OpenAICompatProvider(deployment, api_key)


__all__ = ["Provider", "ProviderUnavailable", "make_provider"]
