"""msgspec Structs for every message promptbus puts on the wire: one source of truth."""
