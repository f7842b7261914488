"""Telemetry: what every process counted, reported to NATS every few seconds and read
back as an hour of time series by any process (the dashboard's charts, alert rules)."""
