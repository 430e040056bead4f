"""Entrypoints for `ray job submit` (each calls the same run function as the `karma` CLI)."""
