"""TypiClust (Hacohen, Dekel, Weinshall, "Active Learning on a Budget", ICML 2022), SPEC §5.

Points: the paired items and the pool items of the selected side, in the current space. Seeded k-means
into K = min(|P| + B, --max-clusters) clusters. Typicality of a pool item: 1 / (mean L2 distance to its
min(20, n_c - 1) nearest neighbours among the n_c points of its own cluster). B times: the cluster with
the fewest paired-or-chosen items (ties: the larger cluster, then the lower index) gives its most typical
unchosen pool item (ties: the lower row); a cluster with no pool item left is skipped.

Typicality is computed for a cluster when it is first visited (at most B clusters), by a sweep of its
pool items against its points: memory is one cluster, time Σ n_c² over the visited clusters.
"""

from __future__ import annotations

import numpy as np
from .._lazy import torch  # imported on first use (fast start)

from ..clustering import kmeans, take
from ..stream import ArrayRows, ConcatRows, collect, sweep, to_device
from ..thresholds import RunningTopK
from .base import Allocation, Context, Strategy, register

NEIGHBOURS = 20


class MappedRows:
    """A Rows source through a map (a head side): loads come out in the map's space."""

    def __init__(self, rows, transform, device: torch.device, d: int):
        self.rows, self.transform, self.device = rows, transform, device
        self.n, self.d = rows.n, d

    def load(self, start, stop, out=None):
        with torch.no_grad():
            return self.transform(self.rows.load(start, stop).to(self.device)).cpu()

    def take(self, rows):
        return take(self.rows, rows, self.device, self.transform)

    def release(self, start, stop):
        self.rows.release(start, stop)


def points_of(ctx: Context):
    """(paired points, all points as Rows: the paired items first, then the pool), in the current space."""
    paired = ctx.paired_points()
    cached = ctx.pool_points()
    if cached is not None:
        return paired, ArrayRows(np.concatenate([paired, cached]))
    pool = ctx.pool if ctx.transform is None else MappedRows(ctx.pool, ctx.transform, ctx.device, paired.shape[1])
    return paired, ConcatRows(ArrayRows(paired), pool)


def typicality(vectors: np.ndarray, queries: np.ndarray, device: torch.device) -> np.ndarray:
    """1 / mean distance of each of `queries` (indices into `vectors`, the points of one cluster) to its
    min(20, n - 1) nearest other points; 0 for a cluster of one point."""
    n = len(vectors)
    k = min(NEIGHBOURS, n - 1)
    if k < 1:
        return np.zeros(len(queries))
    reducer = RunningTopK(k, torch.from_numpy(queries).to(device), torch.arange(n, device=device), all_k=True)
    (sims,) = collect(sweep(ArrayRows(vectors[queries]), to_device(vectors, device), reducer, device=device))
    dist = np.sqrt(np.maximum(2.0 - 2.0 * sims.astype(np.float64), 0.0)).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 1.0 / dist


class TypiClust(Strategy):
    """typiclust: the most typical item of each of the B largest uncovered k-means clusters (Hacohen et al., ICML
    2022)."""
    name = "typiclust"
    needs = frozenset({"paired"})
    options = ("max_clusters",)
    summary = ("k-means over paired + pool items (K = paired + B, at most --max-clusters); B times the least "
               "covered cluster gives its most typical pool item (1 / mean distance to its 20 nearest neighbours)")
    paper = "Hacohen, Dekel, Weinshall, ICML 2022"

    def gain(self, ctx: Context):
        paired, points = points_of(ctx)
        k = min(len(paired) + ctx.budget, ctx.opts.max_clusters, points.n)
        _, assign = kmeans(points, k, ctx.inputs.seed, device=ctx.device, chunk_size=ctx.inputs.chunk_size)
        return len(paired), points, assign, k

    def allocate(self, ctx: Context, gain) -> Allocation:
        n_paired, points, assign, k = gain
        size = np.bincount(assign, minlength=k)
        covered = np.bincount(assign[:n_paired], minlength=k)
        pool_cluster = assign[n_paired:]
        left = np.bincount(pool_cluster[ctx.selectable], minlength=k)  # selectable pool items per cluster
        typical: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cluster -> (pool rows, typicality)
        chosen = np.zeros(ctx.pool.n, dtype=bool)
        rows, score = [], []
        for _ in range(ctx.budget):
            open_ = np.flatnonzero(left > 0)
            c = int(open_[np.lexsort((open_, -size[open_], covered[open_]))[0]])
            if c not in typical:
                members = np.flatnonzero(assign == c)
                pool_members = members[members >= n_paired]
                t = typicality(take(points, members), np.flatnonzero(members >= n_paired), ctx.device)
                typical[c] = (pool_members - n_paired, t)
            cand, t = typical[c]
            ok = ctx.selectable[cand] & ~chosen[cand]
            best = np.flatnonzero(ok)[np.lexsort((cand[ok], -t[ok]))[0]]
            rows.append(int(cand[best]))
            score.append(t[best])
            chosen[cand[best]] = True
            covered[c] += 1
            left[c] -= 1
            ctx.progress("typiclust", 1, ctx.budget)
        ctx.attrs["clusters_used"] = k
        return Allocation(np.array(rows, np.int64), np.array(score, np.float32))

    def reason(self, score, parts, attrs):
        return (f"the most typical item (typicality {score:.3g}: 1 / mean distance to its 20 nearest neighbours) "
                f"of the least covered cluster")


register(TypiClust())
