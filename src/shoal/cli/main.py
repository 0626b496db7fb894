"""Entry point of the `shoal` command: a typer app whose sub-commands live beside it."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Shoal mesh VPN")


@app.command()
def version() -> None:
    """Print Shoal's version."""
    from shoal import __version__

    typer.echo(__version__)


def main() -> None:
    app()
