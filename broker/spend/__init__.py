"""Spend logs: one record per request, kept in a stream, paged through by the admin API
and the CLI (issue 18)."""
