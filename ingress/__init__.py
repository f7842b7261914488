"""The thin OpenAI-compatible HTTP layer over the NATS client."""
