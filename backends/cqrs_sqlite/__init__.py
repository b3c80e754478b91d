"""The sqlite backend (being built)."""
