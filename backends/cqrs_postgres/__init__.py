"""The postgres backend (being built)."""
