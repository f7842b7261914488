"""Alerts: rules over the telemetry series and budgets, evaluated by one process at a
time, with a lifecycle (pending, firing, resolved, acknowledged) and notifications."""
