"""Response caching: exact (hash of the request) and semantic (embedding similarity)."""
