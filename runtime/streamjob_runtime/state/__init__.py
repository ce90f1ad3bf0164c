"""State backends (working state) and checkpoint storage (durable state)."""
