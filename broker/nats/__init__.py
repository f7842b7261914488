"""NATS plumbing: the connection, every subject, the streams and buckets, the pull engine,
acks, KV watch and the embedded server."""
