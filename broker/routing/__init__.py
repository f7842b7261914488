"""Routing: the one router that picks a deployment, worker presence and the breaker board."""
