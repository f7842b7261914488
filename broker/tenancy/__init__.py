"""Tenancy: virtual keys, admission, rate limits, usage and budgets. Every metering rule
lives here."""
