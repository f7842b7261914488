"""The mock provider's content and the mock upstream HTTP server (for demos, tests and benches)."""
