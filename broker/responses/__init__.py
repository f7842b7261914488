"""The Responses API: its translation onto chat, and the responses kept for
``previous_response_id`` and ``GET /v1/responses/{id}``."""
