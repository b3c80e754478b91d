"""The harness's interleaving: what a side leaves behind is paid evenly by the others."""

from __future__ import annotations

import collections
import itertools
from types import SimpleNamespace

from benchmarks.harness import _WorkloadRun
from benchmarks.workloads import Sizes


async def test_no_side_always_runs_right_after_the_same_other_side():
    """Whatever a side leaves behind (threads, caches) is paid by the side run next: over a
    run every side follows each other side about equally often, and goes first as often."""
    ran: list[str] = []

    def preparer(name: str):
        async def for_round(index: int):
            async def step() -> int:
                ran.append(name)
                return 1

            return [step] * 30

        return for_round

    names = ["framework", "raw", "peer"]
    run = _WorkloadRun.__new__(_WorkloadRun)
    run.sides = [SimpleNamespace(name=name) for name in names]
    run.preparers = {name: preparer(name) for name in names}
    run.rates = {name: [] for name in names}
    run.profiler, run.errors = None, []
    run.sizes = Sizes(1, 1, 1, 1, 1, 1, repetitions=10)
    for index in range(11):
        await run.round(index)
    follows = collections.Counter(itertools.pairwise(ran))
    for side in names:
        after = [follows[other, side] for other in names if other != side]
        assert max(after) - min(after) <= len(ran) // 100, (side, after)
    firsts = collections.Counter(ran[i] for i in range(0, len(ran), 3))
    assert max(firsts.values()) - min(firsts.values()) <= len(ran) // 100
