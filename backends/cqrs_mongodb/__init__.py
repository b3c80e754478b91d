"""The mongodb backend (being built)."""
