"""Subcommands of `carecard`, one module per area."""
