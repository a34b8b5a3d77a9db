"""Placeholder, replaced by the real command."""

import click


@click.command()
def up() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")
