"""`abtest run` (placeholder)."""

from __future__ import annotations

import click


@click.command()
def run() -> None:
    """Not yet written."""
