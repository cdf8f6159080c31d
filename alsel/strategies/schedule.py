"""schedule: typical items while the pool is uncovered, hard negatives once it is covered (SPEC §9's
regime-aware candidate, after DCoM — Mishal & Weinshall 2024 — and TCM — Doucet et al. 2024).

The coverage c is the share of the selectable pool within δ of a paired item (ProbCover's δ: the largest
with 95% pure balls under k-means, or --delta), in the current space. The batch is (1 − c)·B items by
TypiClust, then c·B (rounded) by the hard-negative score among the rest (positives first, then the fill):
a small paired set that covers little of the pool gets typical items, as TypiClust's authors find for
small budgets; a paired set that covers it gets the items that would be hard negatives of its pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..stream import ArrayRows, MaxSim, RangeRows, collect, sweep, to_device
from .base import Allocation, Context, Strategy, register
from .hn import HardNegatives, hn_gain, positives_then_fill
from .probcover import ball_members, purity_delta
from .typiclust import TypiClust, points_of

TYPICLUST = TypiClust()
HARD = HardNegatives()


def coverage(ctx: Context) -> tuple[int, int, float]:
    """(covered, selectable, δ): the selectable pool rows of ctx.rows, and those of them within δ of a paired
    item, in the current space. c = covered / selectable (summed over the shards: the whole pool's c)."""
    paired, points = points_of(ctx)
    n_paired = len(paired)
    delta = ctx.opts.delta
    if delta == "auto":  # ProbCover's δ, from the same members (the whole pool's: the same in every shard)
        delta, _ = purity_delta(ctx, points, ball_members(ctx, points)[2])
    pool_rows = ArrayRows(points.take(np.arange(n_paired, points.n))) if isinstance(points, ArrayRows) \
        else points.parts[1]
    a, b = ctx.rows
    (near,) = collect(sweep(RangeRows(pool_rows, a, b), to_device(paired, ctx.device), MaxSim(), device=ctx.device,
                            chunk_size=ctx.inputs.chunk_size, precision=ctx.inputs.precision))  # exact maxima
    ok = ctx.selectable[a:b]
    return int((near[ok] >= 1.0 - delta * delta / 2.0).sum()), int(ok.sum()), float(delta)


def hard_items(covered: int, selectable: int, budget: int) -> tuple[float, int]:
    """(c, round(c·B)): the coverage and the hard-negative share of the batch."""
    c = covered / selectable if selectable else 1.0
    return c, int(round(c * budget))


def _joined(typical: Allocation | None, hard: Allocation | None, attrs: dict) -> Allocation:
    """The typical items, then the hard ones (at least one part: B >= 1); /hard says which part each came from."""
    parts = [(x, flag) for x, flag in ((typical, 0.0), (hard, 1.0)) if x is not None]
    rows = np.concatenate([np.asarray(x.rows, np.int64) for x, _ in parts])
    score = np.concatenate([np.asarray(x.score, np.float32) for x, _ in parts])
    flag = np.concatenate([np.full(len(x.rows), f, np.float32) for x, f in parts])
    fill, rule = (hard.fill, hard.fill_rule) if hard is not None else (0, "")
    return Allocation(rows, score, fill=fill, fill_rule=rule, parts={"hard": flag}, attrs=attrs)


def _part(shards: list, prefix: str) -> list:
    """The shards' candidates of one part (the datasets named prefix + name), as the part's own merge reads."""
    return [dataclasses.replace(s, data={k[len(prefix):]: v for k, v in s.data.items() if k.startswith(prefix)})
            for s in shards]


class Schedule(Strategy):
    """schedule: TypiClust for the uncovered share of the batch, hard negatives for the covered share."""
    name = "schedule"
    needs = frozenset({"paired"})
    options = HardNegatives.options + ("max_clusters", "delta", "clusters")
    summary = ("coverage c of the pool by the paired set (δ-balls, ProbCover's δ) → (1 − c)·B items by TypiClust, "
               "c·B by the hard-negative score: typical first, hard once the pool is covered")
    paper = "DCoM (Mishal & Weinshall, 2024); TCM (Doucet et al., 2024); Jo et al., arXiv 2405.16301"
    shardable = True

    def gain(self, ctx: Context):
        covered, selectable, delta = coverage(ctx)
        n_hard = hard_items(covered, selectable, ctx.budget)[1]
        both = ctx.inputs.shard is not None  # a shard does not know the whole pool's c: it keeps both parts
        typical = TYPICLUST.gain(ctx) if both or n_hard < ctx.budget else None
        hard = hn_gain(ctx) if both or n_hard > 0 else None
        return covered, selectable, delta, typical, hard

    def allocate(self, ctx: Context, gain) -> Allocation:
        covered, selectable, delta, typical, hard = gain
        c, n_hard = hard_items(covered, selectable, ctx.budget)
        ctx.attrs.update(coverage=round(c, 6), coverage_delta=delta, hard_items=n_hard)
        left = ctx.selectable.copy()
        first = None
        if n_hard < ctx.budget:
            first = TYPICLUST.allocate(ctx.sub(ctx.budget - n_hard, left), typical)
            left[first.rows] = False
        second = positives_then_fill(ctx.sub(n_hard, left), hard) if n_hard > 0 else None
        return _joined(first, second, {})

    def shard_map(self, ctx: Context, gain):
        """Both parts' candidates for the whole budget (TypiClust's per cluster, hn's B first rows) and the
        shard's covered count: the merge's c, and so its selection, are the single process's exactly."""
        covered, _, delta, typical, hard = gain
        t_data, t_attrs = TYPICLUST.shard_map(ctx, typical)
        h_data, _ = HARD.shard_map(ctx, hard)
        data = {"row": np.union1d(t_data["row"], h_data["row"]).astype(np.int64),
                **{f"typical_{k}": v for k, v in t_data.items()}, **{f"hard_{k}": v for k, v in h_data.items()}}
        return data, {"covered_selectable": covered, "coverage_delta": delta, **t_attrs}

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        c, n_hard = hard_items(sum(int(s.attrs["covered_selectable"]) for s in shards),
                               sum(int(s.attrs["selectable"]) for s in shards), budget)
        attrs = {"coverage": round(c, 6), "coverage_delta": float(shards[0].attrs["coverage_delta"]),
                 "hard_items": n_hard}
        first = TYPICLUST.merge(_part(shards, "typical_"), opts, budget - n_hard, seed, device) \
            if n_hard < budget else None
        second = None
        if n_hard > 0:
            taken = first.rows if first is not None else np.zeros(0, np.int64)
            hard = []
            for s in _part(shards, "hard_"):
                rest = ~np.isin(s.data["row"], taken)
                hard.append(dataclasses.replace(s, data={k: v[rest] for k, v in s.data.items()}))
            second = HARD.merge(hard, opts, n_hard, seed, device)
        if first is not None:
            attrs["clusters_used"] = first.attrs["clusters_used"]
        return _joined(first, second, attrs)

    def reason(self, score, parts, attrs):
        covered = f"the paired set covers {100 * float(attrs.get('coverage', 0)):.0f}% of the pool"
        if parts.get("hard"):
            return f"{HARD.reason(score, parts, attrs)} ({covered}: its share of the batch is hard negatives)"
        return f"{TYPICLUST.reason(score, parts, attrs)} ({covered}: the rest of the batch is typical items)"


register(Schedule())
