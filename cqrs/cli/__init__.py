"""The ``cqrs`` command line: operate an event store (``pip install 'cqrs-es[cli]'``).

Commands (``cqrs --help`` and ``cqrs COMMAND --help`` explain each):

- ``cqrs schema create | status``: apply the schema; list the applied and pending migrations
  (``status`` exits 1 while some are pending; a backend without migrations says so).
- ``cqrs events show TYPE ID``: one aggregate's events (sequence, type, version, time,
  metadata, the payload pretty-printed). ``cqrs events tail [--type T] [--after P]
  [--limit N] [--follow]``: the global stream; ``--follow`` is a
  :class:`~cqrs.subscription.Subscription`, so it waits for new commits.
- ``cqrs stats``: events, aggregates and snapshots per aggregate type, the head position and
  the size on disk where the backend can tell.
- ``cqrs copy --from URL --to URL [--type T] [--chunk-size N]``: see
  :mod:`cqrs.cli.copying` (global order, exact fields, resumable with nothing stored twice,
  a checksum of both sides at the end).
- ``cqrs verify [--type T]``: see :mod:`cqrs.cli.checks` (exit 1 when damage is found).
- ``cqrs projections list | status | run | reset | rebuild MODULE:OBJECT...``: see
  :mod:`cqrs.cli.projections`.
- ``cqrs --install-completion`` / ``--show-completion``: shell completion (Typer's).

Every command takes ``--database-url`` (default ``$CQRS_DATABASE_URL``) and, where it
reports, ``--json`` (one JSON document, or one per line for ``events tail``). Exit codes:
0 ok; 1 something was found wrong (damage, a copy that does not verify, a failed projection,
a database error or conflict); 2 usage (an unknown option, no URL, an unsupported scheme, a
projection that cannot be imported). Text goes to stdout, progress bars and errors to
stderr. Passwords of the URLs given (and any ``scheme://user:password@``) are replaced by
``***`` in every line printed or logged (:class:`cqrs.cli.output.Output`).

Repositories are opened with :func:`cqrs.connect`, so every installed backend works,
through the storage port; optional methods make some commands faster or tell more
(:mod:`cqrs.cli.capabilities`). The commands are built on Typer and Rich, which only the
``cli`` extra installs: :func:`main` says so and exits 2 when they are missing.
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
