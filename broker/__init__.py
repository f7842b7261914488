"""NATS plumbing: connection, subjects, provisioning, embedded server, client and CLI."""
