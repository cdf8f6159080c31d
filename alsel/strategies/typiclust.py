"""TypiClust (Hacohen, Dekel, Weinshall, "Active Learning on a Budget", ICML 2022), SPEC §5, with its exact
sharded form (SPEC §10).

Points: the paired items and the pool items of the selected side, in the current space. Seeded k-means
into K = min(|P| + B, --max-clusters) clusters, fitted on a seeded sample of at most KMEANS_SAMPLE points
(the same sample in every shard); every point is then assigned to its nearest center. Typicality of a
pool item: 1 / (mean L2 distance to its nearest 20 neighbours in its own cluster, itself excluded). The
neighbours are taken among the cluster's points in the sample: up to KMEANS_SAMPLE points that is every
point (SPEC §5 exactly); beyond, the sample stands for the cluster (choice: what makes a shard's
typicality the single process's). B times: the cluster with the fewest paired-or-chosen items (ties: the
larger cluster, then the lower cluster index) gives its most typical unchosen pool item (ties: the lower
row); a cluster with no pool item left is skipped.

Sharded: every shard assigns and scores its own rows and keeps, per cluster, its B most typical
selectable rows with the cluster counts; which cluster the loop visits depends only on the counts, and the
most typical unchosen item of a cluster is among the union of the shards' lists, so the merge gives the
single-process selection exactly. Cost per shard: its rows × the sampled points of their cluster.
"""

from __future__ import annotations

import numpy as np

from .._lazy import torch  # imported on first use (fast start)
from ..clustering import KMEANS_SAMPLE, assign, fit_on_sample, take
from ..stream import ArrayRows, ConcatRows, RangeRows
from .base import Allocation, Context, Strategy, register

NEIGHBOURS = 20
CHUNK = 1 << 18  # pool rows loaded at a time: 0.5 GiB at D = 512 (each chunk costs one small product per cluster)


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


def top_similarities(xt: torch.Tensor, own: torch.Tensor, rt: torch.Tensor, rid: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of xt its k largest similarities to the rows of rt (descending), a row never its own
    neighbour (same id: -inf there), padded with -inf to NEIGHBOURS columns; on xt's device."""
    out = []
    for a in range(0, len(xt), 4096):
        s = xt[a:a + 4096] @ rt.T
        s.masked_fill_(own[a:a + 4096, None] == rid[None, :], -torch.inf)
        out.append(s.topk(k, dim=1).values)
    top = torch.cat(out)
    return torch.nn.functional.pad(top, (0, NEIGHBOURS - k), value=-torch.inf) if k < NEIGHBOURS else top


def typicality_from_top(top: np.ndarray) -> np.ndarray:
    """1 / mean distance to the finite similarities of each row of `top` (its nearest neighbours'
    similarities, descending), in float64 from the float32 values; 0 without a neighbour."""
    if top.shape[1] == 0:
        return np.zeros(len(top))
    top = top.astype(np.float64)
    valid = np.isfinite(top)
    kk = np.minimum(valid.sum(axis=1), NEIGHBOURS)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * np.where(valid, top, 1.0), 0.0))
    mean = (dist * (np.arange(top.shape[1])[None, :] < kk[:, None])).sum(axis=1) / np.maximum(kk, 1)
    with np.errstate(divide="ignore"):
        return np.where(kk > 0, 1.0 / mean, 0.0)


class ClusterRefs:
    """Each cluster's sampled points and their point ids, moved to the device once (not once per chunk and
    cluster): cluster c's are rows [start[c], start[c] + count[c]) of `points`, in sample order."""

    def __init__(self, sample: np.ndarray, picked: np.ndarray, sample_cluster: np.ndarray, k: int, device):
        order = np.argsort(sample_cluster, kind="stable")
        self.count = np.bincount(sample_cluster, minlength=k)
        self.start = np.cumsum(self.count) - self.count
        self.points = torch.from_numpy(np.ascontiguousarray(sample[order])).to(device)
        self.ids = torch.from_numpy(np.asarray(picked)[order]).to(device)

    def of(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(points, ids) of cluster c's sampled references, views on the device."""
        a, b = int(self.start[c]), int(self.start[c] + self.count[c])
        return self.points[a:b], self.ids[a:b]


def chunk_typicality(x: np.ndarray, point_ids: np.ndarray, by_cluster: np.ndarray, per: np.ndarray,
                     refs: ClusterRefs, device) -> np.ndarray:
    """Typicality of every row of one chunk against its cluster's sampled references: 1 / mean distance to
    its min(20, m) nearest references, a row never its own neighbour (same id), 0 without a neighbour.
    Rows grouped by cluster (`by_cluster`: the chunk's rows, `per`: how many of them per cluster, in cluster
    order); the chunk and the rows' ids go to the device once, each cluster's neighbours are found there,
    and one copy brings every cluster's back."""
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)[torch.from_numpy(by_cluster).to(device)]
    own = torch.from_numpy(np.asarray(point_ids)[by_cluster]).to(device)
    ends, tops, ks = np.cumsum(per), [], np.minimum(NEIGHBOURS, refs.count)
    for c in np.flatnonzero(per):
        if ks[c] > 0:
            a = ends[c] - per[c]
            rt, rid = refs.of(c)
            tops.append(top_similarities(xt[a:ends[c]], own[a:ends[c]], rt, rid, int(ks[c])))
    top = torch.cat(tops).cpu().numpy() if tops else np.zeros((0, NEIGHBOURS), np.float32)
    out, at = np.zeros(len(by_cluster)), 0
    for c in np.flatnonzero(per):
        if ks[c] > 0:  # the float64 arithmetic on each cluster's own k columns
            out[ends[c] - per[c]:ends[c]] = typicality_from_top(top[at:at + per[c], :ks[c]])
            at += per[c]
    return out


class TypiClust(Strategy):
    """typiclust: the most typical item of each of the B largest uncovered k-means clusters (Hacohen et al., ICML
    2022)."""
    name = "typiclust"
    needs = frozenset({"paired"})
    options = ("max_clusters",)
    summary = ("k-means over paired + pool items (K = paired + B, at most --max-clusters); B times the least "
               "covered cluster gives its most typical pool item (1 / mean distance to its 20 nearest neighbours)")
    paper = "Hacohen, Dekel, Weinshall, ICML 2022"
    shardable = True

    def gain(self, ctx: Context):
        """Per cluster: the B most typical selectable rows of ctx.rows, and the cluster counts."""
        paired, points = points_of(ctx)
        n_p = len(paired)
        k = min(n_p + ctx.budget, ctx.opts.max_clusters, points.n)
        centers, picked, sample = fit_on_sample(points, k, ctx.inputs.seed, KMEANS_SAMPLE, device=ctx.device)
        sample_cluster = assign(ArrayRows(sample), centers, ctx.device)
        paired_count = np.bincount(assign(ArrayRows(paired), centers, ctx.device), minlength=k)
        refs = ClusterRefs(sample, picked, sample_cluster, k, ctx.device)
        a, b = ctx.rows
        pool_points = RangeRows(points, n_p + a, n_p + b)
        pool_count, left = np.zeros(k, np.int64), np.zeros(k, np.int64)
        lists: dict[int, list] = {c: [] for c in range(k)}
        for s in range(0, b - a, CHUNK):
            e = min(b - a, s + CHUNK)
            x = np.asarray(pool_points.load(s, e).numpy(), dtype=np.float32)
            cluster = assign(ArrayRows(x), centers, ctx.device)
            rows = np.arange(a + s, a + e)
            pool_count += np.bincount(cluster, minlength=k)
            ok = np.flatnonzero(ctx.selectable[rows])
            per = np.bincount(cluster[ok], minlength=k)
            left += per
            by_cluster = ok[np.argsort(cluster[ok], kind="stable")]  # grouped by cluster, rows ascending within
            t = chunk_typicality(x, n_p + rows, by_cluster, per, refs, ctx.device)
            ends = np.cumsum(per)
            for c in np.flatnonzero(per):
                lists[c].append((rows[by_cluster[ends[c] - per[c]:ends[c]]], t[ends[c] - per[c]:ends[c]]))
            pool_points.release(s, e)
            ctx.progress("typicality", e - s, b - a)
        return k, paired_count, pool_count, left, _best_per_cluster(lists, ctx.budget)

    def shard_map(self, ctx: Context, gain):
        k, paired_count, pool_count, left, best = gain
        rows = np.concatenate([best[c][0] for c in range(k)]).astype(np.int64)
        return ({"row": rows, "cluster": np.concatenate([np.full(len(best[c][0]), c) for c in range(k)]).astype(np.int64),
                 "typicality": np.concatenate([best[c][1] for c in range(k)]), "paired_count": paired_count,
                 "pool_count": pool_count, "left": left}, {"clusters_used": k})

    def allocate(self, ctx: Context, gain) -> Allocation:
        k, paired_count, pool_count, left, best = gain
        alloc = _loop(k, paired_count, paired_count + pool_count, left, best, ctx.budget)
        ctx.attrs["clusters_used"] = k
        return alloc

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        k = int(shards[0].attrs["clusters_used"])
        paired_count = shards[0].data["paired_count"]
        size = paired_count + sum(s.data["pool_count"] for s in shards)
        left = sum(s.data["left"] for s in shards)
        lists = {c: [] for c in range(k)}
        for s in shards:
            for c in range(k):
                mine = s.data["cluster"] == c
                lists[c].append((s.data["row"][mine], s.data["typicality"][mine]))
        alloc = _loop(k, paired_count, size, left, _best_per_cluster(lists, budget), budget)
        alloc.attrs["clusters_used"] = k
        return alloc

    def reason(self, score, parts, attrs):
        return (f"the most typical item (typicality {score:.3g}: 1 / mean distance to its 20 nearest neighbours) "
                f"of the least covered cluster")


def _best_per_cluster(lists: dict, budget: int) -> dict:
    """Per cluster, (rows, typicality) of its `budget` most typical rows (ties: the lower row)."""
    out = {}
    for c, parts in lists.items():
        rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        t = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
        order = np.lexsort((rows, -t))[:budget]
        out[c] = (rows[order].astype(np.int64), t[order])
    return out


def _loop(k: int, covered: np.ndarray, size: np.ndarray, left: np.ndarray, best: dict, budget: int) -> Allocation:
    """B times the least covered cluster with pool items left gives its most typical unchosen item."""
    covered, left = covered.copy(), left.copy()
    taken = np.zeros(k, dtype=np.int64)
    rows, score = [], []
    for _ in range(budget):
        open_ = np.flatnonzero(left > 0)
        c = int(open_[np.lexsort((open_, -size[open_], covered[open_]))[0]])
        rows.append(int(best[c][0][taken[c]]))
        score.append(best[c][1][taken[c]])
        taken[c] += 1
        covered[c] += 1
        left[c] -= 1
    return Allocation(np.array(rows, np.int64), np.array(score, np.float32))


register(TypiClust())
