"""`abtest server` (placeholder until its module is written)."""

from __future__ import annotations

import click


@click.group()
def server() -> None:
    """Not yet written."""
