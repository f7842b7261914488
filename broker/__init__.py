"""The broker: NATS plumbing (``nats/``) and the features kept in shared state (tenancy, batches,
cache, routing), plus the Python ``BrokerClient``."""
