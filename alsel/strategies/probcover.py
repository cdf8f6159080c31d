"""ProbCover (Yehuda, Dekel, Hacohen, Weinshall, "Active Learning Through a Covering Lens", NeurIPS
2022), SPEC §5.

Points: the paired items and the pool items of the selected side, in the current space; an edge u → v
when ||u - v|| <= δ, i.e. s(u, v) >= 1 - δ²/2 for unit rows. Points within δ of a paired item start
covered. B times: the pool item whose ball holds the most uncovered points (ties: the lower row) is
chosen and its ball covered; once nothing is left to cover, the rest of the batch is random (seeded) and
the selection says so. `--delta auto`: the largest δ of DELTA_GRID for which at least PURITY of the
points' balls are pure (every point in the ball shares the point's k-means cluster, k = --clusters).

Bounded memory: the ball members are the points themselves up to MAX_TARGETS points; beyond that (or
where the edges would exceed MAX_EDGES) a seeded uniform sample of the points stands for them, and ball
counts are counts of sampled points (a note says so). Edges come from one sweep of the pool against the
members with the bias -(1 - δ²/2) (exact at every precision: the sign form), the greedy updates counts
through the reverse edges, O(edges) in all.
"""

from __future__ import annotations

import numpy as np
from .._lazy import torch  # imported on first use (fast start)

from ..clustering import kmeans, take
from ..stream import ArrayRows, MaxSim, collect, sweep, to_device
from .base import Allocation, Context, Strategy, register
from .typiclust import points_of

DELTA_GRID = np.round(np.arange(1, 201) * 0.01, 2)  # 0.01 .. 2.00 (unit rows: distances are at most 2)
PURITY = 0.95
MAX_TARGETS = 20_000  # ball members: all points up to this many, else a seeded sample
MAX_EDGES = 50_000_000  # about 400 MB of (row, member) int32 pairs
ESTIMATE_ROWS = 2048  # pool rows whose balls are counted to estimate the edges


class Edges:
    """Reducer over s(u, v) - (1 - δ²/2): collects the entries >= 0 (u → v edges) into `self.rows` and
    `self.cols`; per row it returns its degree."""

    def __init__(self):
        self.rows, self.cols = [], []

    def _keep(self, r: torch.Tensor, c: torch.Tensor, r0: int, c0: int, n: int) -> torch.Tensor:
        self.rows.append((r + r0).cpu().numpy().astype(np.int64))
        self.cols.append((c + c0).cpu().numpy().astype(np.int32))
        return torch.bincount(r, minlength=n)

    def init(self, n, r0):
        return torch.zeros(n, dtype=torch.int64)

    def update(self, state, s, r0, c0):
        r, c = (s >= 0).nonzero(as_tuple=True)
        return state + self._keep(r.cpu(), c.cpu(), r0, c0, s.shape[0])

    init_low = init

    def update_low(self, state, tile, r0, c0):
        """Sign form: approx < 0 certifies s < 1 - δ²/2; the others are recomputed in float32."""
        rows, r, c = tile.sign_candidates()
        if len(r):
            keep = (tile.values(rows, r, c) >= 0).cpu()
            state = state + self._keep(rows[r][keep].cpu(), c[keep].cpu(), r0, c0, tile.approx.shape[0])
        return state

    def finish(self, state):
        return (state,)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The (row, column) pairs of the δ-ball graph collected so far."""
        if not self.rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        return np.concatenate(self.rows), np.concatenate(self.cols)


class OtherClusterMax:
    """Reducer: per row, the largest similarity to a column of another cluster (-inf if none)."""

    def __init__(self, row_cluster: torch.Tensor, col_cluster: torch.Tensor):
        self.row_cluster, self.col_cluster = row_cluster, col_cluster

    def init(self, n, r0):
        return torch.full((n,), -torch.inf)

    def update(self, state, s, r0, c0):
        same = self.row_cluster[r0:r0 + s.shape[0], None] == self.col_cluster[None, c0:c0 + s.shape[1]]
        return torch.maximum(state, s.masked_fill(same, -torch.inf).amax(dim=1).cpu())

    def finish(self, state):
        return (state,)


def radius(sim: np.ndarray | float) -> np.ndarray:
    """||u - v|| of unit rows from s(u, v)."""
    return np.sqrt(np.maximum(2.0 - 2.0 * np.asarray(sim, dtype=np.float64), 0.0))


def auto_delta(members: np.ndarray, clusters: np.ndarray, device: torch.device) -> tuple[float, float]:
    """(δ, purity at δ): the largest grid δ whose balls are pure for >= PURITY of the points; a ball around
    p is pure when p's nearest point of another cluster lies beyond δ."""
    cl = torch.from_numpy(clusters).to(device)
    (other,) = collect(sweep(ArrayRows(members), to_device(members, device), OtherClusterMax(cl, cl), device=device))
    d_other = radius(other)  # +inf where no other cluster exists (radius of -inf is inf)
    purity = (d_other[None, :] > DELTA_GRID[:, None]).mean(axis=1)
    ok = np.flatnonzero(purity >= PURITY)
    i = int(ok[-1]) if len(ok) else 0
    return float(DELTA_GRID[i]), float(purity[i])


class ProbCover(Strategy):
    """probcover: greedy max coverage of δ-balls (Yehuda et al., NeurIPS 2022)."""
    name = "probcover"
    needs = frozenset({"paired"})
    options = ("delta", "clusters")
    summary = ("greedy max coverage of δ-balls around points (paired + pool), δ auto: the largest with 95% "
               "pure balls under k-means (--clusters); random once all is covered")
    paper = "Yehuda, Dekel, Hacohen, Weinshall, NeurIPS 2022"

    def gain(self, ctx: Context):
        paired, points = points_of(ctx)
        n_paired, n_all = len(paired), points.n
        rng = ctx.rng(1)
        members_at = np.arange(n_all) if n_all <= MAX_TARGETS else np.sort(rng.choice(n_all, MAX_TARGETS, replace=False))
        members = take(points, members_at)
        delta = ctx.opts.delta
        if delta == "auto":
            k = min(ctx.clusters(), n_all)
            _, assign = kmeans(points, k, ctx.inputs.seed, device=ctx.device, chunk_size=ctx.inputs.chunk_size)
            delta, purity = auto_delta(members, assign[members_at], ctx.device)
            ctx.attrs.update(delta_auto=delta, purity=purity)
        cut = 1.0 - delta * delta / 2.0
        pool_rows = ArrayRows(points.take(np.arange(n_paired, n_all))) if isinstance(points, ArrayRows) \
            else points.parts[1]
        # a sample of pool rows says how many edges the whole pool would have
        probe = np.sort(rng.choice(ctx.pool.n, min(ctx.pool.n, ESTIMATE_ROWS), replace=False))
        est = len(self._edges(ctx, ArrayRows(take(pool_rows, probe)), members, cut)[0]) * ctx.pool.n / len(probe)
        if est > MAX_EDGES:
            keep = np.sort(rng.choice(len(members_at), max(1, int(len(members_at) * MAX_EDGES / est)), replace=False))
            members_at, members = members_at[keep], members[keep]
        if len(members_at) < n_all:
            ctx.notes.append(f"probcover: ball members counted on a seeded sample of {len(members_at)} of "
                             f"{n_all} points")
        src, dst = self._edges(ctx, pool_rows, members, cut)
        # members within δ of a paired item (a paired member is within 0 of itself) start covered
        (near,) = collect(sweep(ArrayRows(members), to_device(paired, ctx.device), MaxSim(), device=ctx.device))
        covered = (near >= cut) | (members_at < n_paired)
        ctx.attrs.update(delta=delta, members=len(members_at), edges=len(src))
        return src, dst, covered

    def _edges(self, ctx, rows, members, cut):
        reducer = Edges()
        bias = torch.full((len(members),), -cut, dtype=torch.float32, device=ctx.device)
        collect(sweep(rows, to_device(members, ctx.device), reducer, device=ctx.device, bias=bias,
                      chunk_size=ctx.inputs.chunk_size, precision=ctx.inputs.precision))
        return reducer.pairs()

    def allocate(self, ctx: Context, gain) -> Allocation:
        src, dst, covered = gain
        covered = covered.copy()
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
        start = np.searchsorted(src, np.arange(ctx.pool.n + 1))  # ball of pool row u: dst[start[u]:start[u+1]]
        by_member = np.argsort(dst, kind="stable")
        m_start = np.searchsorted(dst[by_member], np.arange(len(covered) + 1))  # rows whose ball holds member v
        count = np.bincount(src[~covered[dst]], minlength=ctx.pool.n).astype(np.int64)
        count[~ctx.selectable] = -1
        rows, score = [], []
        for b in range(ctx.budget):
            u = int(np.argmax(count))  # ties: the lower row
            if count[u] <= 0:
                break
            rows.append(u)
            score.append(count[u])
            count[u] = -1
            ball = dst[start[u]:start[u + 1]]
            new = ball[~covered[ball]]
            covered[new] = True
            if len(new):
                holders = np.concatenate([by_member[m_start[v]:m_start[v + 1]] for v in new])
                np.subtract.at(count, src[holders], 1)
                count[rows] = -1
                count[~ctx.selectable] = -1
            ctx.progress("probcover", 1, ctx.budget)
        fill = ctx.budget - len(rows)
        if fill:
            rest = np.flatnonzero(ctx.selectable & ~np.isin(np.arange(ctx.pool.n), rows))
            rows += list(np.random.default_rng(ctx.inputs.seed).choice(rest, fill, replace=False))
            score += [0] * fill
            ctx.notes.append(f"probcover: nothing left to cover after {len(rows) - fill} picks")
        return Allocation(np.array(rows, np.int64), np.array(score, np.float32), fill=fill,
                          fill_rule="random" if fill else "")

    def reason(self, score, parts, attrs):
        if not score > 0:
            return "fill (random): everything was covered already"
        return f"its ball of radius δ holds {score:.0f} items no captioned or chosen item covers yet"


register(ProbCover())
