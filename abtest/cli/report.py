"""`abtest report` (placeholder until its module is written)."""

from __future__ import annotations

import click


@click.group()
def report() -> None:
    """Not yet written."""
