"""The baselines: random (uniform, seeded) and core-set (k-center greedy, SPEC §3), both with a sharded form
(SPEC §10)."""

from __future__ import annotations

import numpy as np

from ..stream import RangeRows
from .base import Allocation, Context, Strategy, register
from .kcenter import PER_SHARD, kcenter_greedy, merge_candidates


def permutation_rank(n: int, seed: int) -> np.ndarray:
    """Each pool row's place in a seeded uniform permutation of the pool: the same in every shard."""
    rank = np.empty(n, dtype=np.int64)
    rank[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    return rank


def lowest_ranks(rank: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k rows of `rows` with the lowest rank, in rank order (ranks are distinct: a partition, then a sort
    of the k, not a sort of the pool)."""
    r = rank[rows]
    if k < len(r):
        keep = np.argpartition(r, k - 1)[:k]
        return rows[keep[np.argsort(r[keep])]]
    return rows[np.argsort(r)]


class Random(Strategy):
    """random: B items uniformly at random among the selectable ones (the lowest places of a seeded permutation
    of the pool, so a sharded selection draws the same)."""
    name = "random"
    summary = "uniform over the pool, seeded by --seed"
    paper = "-"
    shardable = True

    def gain(self, ctx: Context):
        return permutation_rank(ctx.pool.n, ctx.inputs.seed)

    def allocate(self, ctx: Context, rank) -> Allocation:
        rows = lowest_ranks(rank, np.flatnonzero(ctx.selectable), ctx.budget)
        return Allocation(rows.astype(np.int64), np.full(ctx.budget, np.nan, np.float32))

    def shard_map(self, ctx: Context, rank):
        rows = lowest_ranks(rank, np.flatnonzero(ctx.selectable), ctx.budget)
        return {"row": rows, "rank": rank[rows]}, {}

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        rows = np.concatenate([s.data["row"] for s in shards])
        rank = np.concatenate([s.data["rank"] for s in shards])
        keep = np.argsort(rank, kind="stable")[:budget]
        return Allocation(rows[keep], np.full(len(keep), np.nan, np.float32))

    def reason(self, score, parts, attrs):
        return f"drawn uniformly at random (seed {attrs.get('seed', 0)})"


class CoreSet(Strategy):
    """coreset: k-center greedy from the paired items (Sener & Savarese, ICLR 2018); sharded as composable
    core-sets (strategies/kcenter.py)."""
    name = "coreset"
    needs = frozenset({"paired"})
    summary = "k-center greedy from the paired items: the farthest pool item, B times (score: its distance)"
    paper = "Sener & Savarese, ICLR 2018"
    shardable = True
    shard_keep = PER_SHARD  # candidates per shard: more than B tightens the merged radius

    def gain(self, ctx: Context):
        return None  # the distances are the allocator's state

    def allocate(self, ctx: Context, gain) -> Allocation:
        k = kcenter_greedy(ctx.pool, ctx.paired_points(), ctx.budget, ctx.device, ctx.inputs.chunk_size,
                           lambda k: ctx.progress("core-set", k, ctx.budget), ctx.transform, exclude=~ctx.selectable,
                           precision=ctx.inputs.precision)
        return Allocation(k.rows, k.dist)

    def shard_map(self, ctx: Context, gain):
        a, b = ctx.rows
        keep = min(self.shard_keep * ctx.budget, int(ctx.selectable[a:b].sum()))
        k = kcenter_greedy(RangeRows(ctx.pool, a, b), ctx.paired_points(), keep, ctx.device, ctx.inputs.chunk_size,
                           lambda n: ctx.progress("core-set", n, keep), ctx.transform, exclude=~ctx.selectable[a:b],
                           keep_emb=True, precision=ctx.inputs.precision)
        return ({"row": a + k.rows, "emb": k.emb, "start_sim": k.start_sim.astype(np.float32)},
                {"radius": k.radius, "kept": keep})

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        emb = np.concatenate([s.data["emb"] for s in shards])
        start = np.concatenate([s.data["start_sim"] for s in shards])
        rows = np.concatenate([s.data["row"] for s in shards])
        k = merge_candidates(emb, start, rows, budget, device)
        r_shards = max(float(s.attrs["radius"]) for s in shards)
        return Allocation(k.rows, k.dist, attrs={"radius_union": k.radius, "radius_shards": r_shards,
                                                 "radius_bound": k.radius + r_shards})

    def reason(self, score, parts, attrs):
        return (f"far from everything captioned: distance {score:.3f} to the nearest captioned (or already "
                f"chosen) item when it was picked")


register(Random())
register(CoreSet())
