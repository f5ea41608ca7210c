"""Subcommands of `loretta-ds` (see loretta_ds/cli.py)."""
