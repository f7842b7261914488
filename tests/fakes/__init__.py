"""Fake provider upstreams speaking each provider's real wire format, for the tests.

Each is a real HTTP server on 127.0.0.1 (uvicorn in a thread of the test process), so
a test can read the exact requests the worker sent and script the exact answers.
"""
