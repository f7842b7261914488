"""What operators see: Prometheus metrics, trace context and JSON logs."""
