"""Anthropic's Messages API, served as chat completions (``translation``)."""
