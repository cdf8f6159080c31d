"""schedule: typical items while the pool is uncovered, hard negatives once it is covered (SPEC §9's
regime-aware candidate, after DCoM — Mishal & Weinshall 2024 — and TCM — Doucet et al. 2024).

The coverage c is the share of the selectable pool within δ of a paired item (ProbCover's δ: the largest
with 95% pure balls under k-means, or --delta), in the current space. The batch is (1 − c)·B items by
TypiClust, then c·B (rounded) by the hard-negative score among the rest (positives first, then the fill):
a small paired set that covers little of the pool gets typical items, as TypiClust's authors find for
small budgets; a paired set that covers it gets the items that would be hard negatives of its pairs.
"""

from __future__ import annotations

import numpy as np

from ..stream import ArrayRows, MaxSim, collect, sweep, to_device
from .base import Allocation, Context, Strategy, register
from .hn import HardNegatives, hn_gain, positives_then_fill
from .probcover import ball_members, purity_delta
from .typiclust import TypiClust, points_of

TYPICLUST = TypiClust()
HARD = HardNegatives()


def coverage(ctx: Context) -> tuple[float, float]:
    """(c, δ): the share of the selectable pool rows within δ of a paired item, in the current space."""
    paired, points = points_of(ctx)
    n_paired = len(paired)
    delta = ctx.opts.delta
    if delta == "auto":  # ProbCover's δ, from the same members
        delta, _ = purity_delta(ctx, points, ball_members(ctx, points)[2])
    pool_rows = ArrayRows(points.take(np.arange(n_paired, points.n))) if isinstance(points, ArrayRows) \
        else points.parts[1]
    (near,) = collect(sweep(pool_rows, to_device(paired, ctx.device), MaxSim(), device=ctx.device,
                            chunk_size=ctx.inputs.chunk_size, precision=ctx.inputs.precision))  # exact maxima
    covered = near >= 1.0 - delta * delta / 2.0
    return float(covered[ctx.selectable].mean()) if ctx.selectable.any() else 1.0, float(delta)


class Schedule(Strategy):
    """schedule: TypiClust for the uncovered share of the batch, hard negatives for the covered share."""
    name = "schedule"
    needs = frozenset({"paired"})
    options = HardNegatives.options + ("max_clusters", "delta", "clusters")
    summary = ("coverage c of the pool by the paired set (δ-balls, ProbCover's δ) → (1 − c)·B items by TypiClust, "
               "c·B by the hard-negative score: typical first, hard once the pool is covered")
    paper = "DCoM (Mishal & Weinshall, 2024); TCM (Doucet et al., 2024); Jo et al., arXiv 2405.16301"

    def gain(self, ctx: Context):
        c, delta = coverage(ctx)
        n_hard = int(round(c * ctx.budget))
        ctx.attrs.update(coverage=round(c, 6), coverage_delta=delta, hard_items=n_hard)
        typical = TYPICLUST.gain(ctx) if n_hard < ctx.budget else None
        hard = hn_gain(ctx) if n_hard > 0 else None
        return n_hard, typical, hard

    def allocate(self, ctx: Context, gain) -> Allocation:
        n_hard, typical, hard = gain
        rows, score, hard_flag, fill, rule = [], [], [], 0, ""
        left = ctx.selectable.copy()
        if typical is not None:
            a = TYPICLUST.allocate(ctx.sub(ctx.budget - n_hard, left), typical)
            rows += list(a.rows)
            score += list(a.score)
            hard_flag += [0.0] * len(a.rows)
            left[a.rows] = False
        if hard is not None:
            a = positives_then_fill(ctx.sub(n_hard, left), hard)
            rows += list(a.rows)
            score += list(a.score)
            hard_flag += [1.0] * len(a.rows)
            fill, rule = a.fill, a.fill_rule
        return Allocation(np.array(rows, np.int64), np.array(score, np.float32), fill=fill, fill_rule=rule,
                          parts={"hard": np.array(hard_flag, np.float32)})

    def reason(self, score, parts, attrs):
        covered = f"the paired set covers {100 * float(attrs.get('coverage', 0)):.0f}% of the pool"
        if parts.get("hard"):
            return f"{HARD.reason(score, parts, attrs)} ({covered}: its share of the batch is hard negatives)"
        return f"{TYPICLUST.reason(score, parts, attrs)} ({covered}: the rest of the batch is typical items)"


register(Schedule())
