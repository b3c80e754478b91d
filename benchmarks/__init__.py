"""Side-by-side benchmarks: ``python -m benchmarks [--quick] [--json PATH] [--backends ...]``.

For each backend, three sides do the same logical work in one process, alternating, several
rounds, medians: **framework** (``CqrsFramework`` + ``PersistedEventStore``), **raw** (the
backend's own statements and round trips written directly on the driver, the same msgspec
JSON: the physical limit of this design) and **peer** (the ``eventsourcing`` package on the
same database; it is synchronous). See :mod:`benchmarks.workloads` for the workloads and
units, :mod:`benchmarks.harness` for the method and the output.
"""
