"""Entry point of the `shoal` command: a typer app whose sub-commands live beside it."""

from __future__ import annotations

import typer

from shoal.cli.netcheck import netcheck
from shoal.cli.node import app as node_app
from shoal.relay.service import relay
from shoal.server.cli import server
from shoal.wg.cli import app as wg_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Shoal mesh VPN")
app.add_typer(wg_app, name="wg")
app.add_typer(node_app)  # daemon, login, create, join, list, status, ping, ...
app.command()(netcheck)
app.command()(server)
app.command()(relay)


@app.command()
def version() -> None:
    """Print Shoal's version."""
    from shoal import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
