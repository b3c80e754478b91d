"""``cqrs projections``: list, inspect, run, reset and rebuild projections."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(help="Drive projections given as module:object.", no_args_is_help=True)
