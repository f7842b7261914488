"""Azure OpenAI: the OpenAI wire format behind Azure's URL and key scheme.

A deployment's ``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``),
its ``model`` the Azure *deployment* name and ``api_version`` the required
``api-version`` query parameter; the key goes in an ``api-key`` header, not a bearer token:

    {base_url}/openai/deployments/{model}/chat/completions?api-version={api_version}

(``/embeddings`` and ``/completions`` likewise).
"""

from __future__ import annotations

from urllib.parse import quote

from schemas.config import DeploymentConfig
from workers.providers.openai_compat import OpenAICompatProvider


class AzureOpenAIProvider(OpenAICompatProvider):
    def __init__(self, deployment: DeploymentConfig, api_key: str | None) -> None:
        super().__init__(deployment, None)
        assert deployment.api_version is not None
        base = f"{self._base_url}/openai/deployments/{quote(self._model, safe='')}"
        query = f"?api-version={quote(deployment.api_version, safe='')}"
        self._url = f"{base}/chat/completions{query}"
        self._embeddings_url = f"{base}/embeddings{query}"
        self._text_url = f"{base}/completions{query}"
        if api_key:
            self._headers["api-key"] = api_key
        self._stream_headers = self._headers | {"Accept": "text/event-stream"}
