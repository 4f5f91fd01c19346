"""`abtest model` (placeholder until its module is written)."""

from __future__ import annotations

import click


@click.group()
def model() -> None:
    """Not yet written."""
