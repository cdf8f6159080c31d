"""The baselines: random (uniform, seeded) and core-set (k-center greedy, SPEC §3)."""

from __future__ import annotations

import numpy as np

from .kcenter import kcenter_greedy
from ..stream import ArrayRows
from .base import Allocation, Context, Strategy, register


class Random(Strategy):
    """random: B items uniformly at random among the selectable ones."""
    name = "random"
    summary = "uniform over the pool, seeded by --seed"
    paper = "-"

    def gain(self, ctx: Context):
        return None

    def allocate(self, ctx: Context, gain) -> Allocation:
        cand = np.flatnonzero(ctx.selectable)
        rows = np.random.default_rng(ctx.inputs.seed).choice(cand, size=ctx.budget, replace=False)
        return Allocation(rows.astype(np.int64), np.full(ctx.budget, np.nan, np.float32))

    def reason(self, score, parts, attrs):
        return f"drawn uniformly at random (seed {attrs.get('seed', 0)})"


class CoreSet(Strategy):
    """coreset: k-center greedy from the paired items (Sener & Savarese, ICLR 2018)."""
    name = "coreset"
    needs = frozenset({"paired"})
    summary = "k-center greedy from the paired items: the farthest pool item, B times (score: its distance)"
    paper = "Sener & Savarese, ICLR 2018"

    def gain(self, ctx: Context):
        return None  # the distances are the allocator's state

    def allocate(self, ctx: Context, gain) -> Allocation:
        cached = ctx.pool_points()  # held in memory when it fits: read once instead of B + 1 times
        rows_src = ArrayRows(cached) if cached is not None else ctx.pool
        transform = None if cached is not None else ctx.transform
        rows, dist = kcenter_greedy(rows_src, ctx.paired_points(), ctx.budget, ctx.device, ctx.inputs.chunk_size,
                                    lambda k: ctx.progress("core-set", k, ctx.budget), transform,
                                    exclude=~ctx.selectable)
        return Allocation(rows, dist)

    def reason(self, score, parts, attrs):
        return (f"far from everything captioned: distance {score:.3f} to the nearest captioned (or already "
                f"chosen) item when it was picked")


register(Random())
register(CoreSet())
