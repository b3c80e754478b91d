"""``python -m cqrs``: the ``cqrs`` command line (see :mod:`cqrs.cli`)."""

from cqrs.cli import main

if __name__ == "__main__":
    main()
