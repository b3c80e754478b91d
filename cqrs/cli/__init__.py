"""The ``cqrs`` command line: operate an event store (``pip install 'cqrs-es[cli]'``).

``cqrs schema create | status``, ``cqrs events show | tail``, ``cqrs stats``, ``cqrs copy``,
``cqrs verify`` and ``cqrs projections ...``; ``cqrs --help`` explains each. The commands
are built on Typer and Rich, which only the ``cli`` extra installs: :func:`main` says so
and exits 2 when they are missing. The engines behind the commands (:mod:`cqrs.cli.copying`,
:mod:`cqrs.cli.checks`) are plain async functions over the storage port.
"""

from __future__ import annotations

import sys

__all__ = ["main"]

INSTALL_HINT = "cqrs: the command line needs its extra: pip install 'cqrs-es[cli]'"


def main() -> None:
    """Run the ``cqrs`` command line (the console script and ``python -m cqrs``)."""
    try:
        from cqrs.cli.app import app  # noqa: PLC0415 - Typer and Rich are optional
    except ImportError as error:
        if (error.name or "").partition(".")[0] not in {"typer", "rich", "click"}:
            raise
        sys.stderr.write(INSTALL_HINT + "\n")
        raise SystemExit(2) from None
    app()
