"""Checkpoint coordination: pending and completed checkpoints, metadata, the store."""
