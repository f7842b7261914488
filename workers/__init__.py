"""Per-provider worker pools: pull requests from NATS, call the provider, reply, ack."""
