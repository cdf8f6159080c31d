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

from ..clustering import assign, fit_on_sample, take
from ..stream import ArrayRows, MaxSim, RangeRows, collect, sweep, to_device
from .base import Allocation, Context, Strategy, register
from .baselines import lowest_ranks, permutation_rank
from .kcenter import PER_SHARD
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
        return torch.zeros(n, dtype=torch.int64)  # cpu: the counts are kept on the host

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
        return torch.full((n,), -torch.inf)  # cpu: update() brings each tile's maxima to the host

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


def ball_members(ctx: Context, points) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """(the generator that drew them, the ball members' rows in points, the members): all points, or a
    seeded sample of MAX_TARGETS of them."""
    rng = ctx.rng(1)
    n_all = points.n
    members_at = np.arange(n_all) if n_all <= MAX_TARGETS else np.sort(rng.choice(n_all, MAX_TARGETS, replace=False))
    return rng, members_at, take(points, members_at)


def purity_delta(ctx: Context, points, members: np.ndarray) -> tuple[float, float]:
    """(δ, its purity) for --delta auto: the largest δ whose balls around the members are 95% pure under
    k-means (--clusters) fitted on a sample of the points; only the members are assigned."""
    centers, _, _ = fit_on_sample(points, min(ctx.clusters(), points.n), ctx.inputs.seed, device=ctx.device)
    return auto_delta(members, assign(ArrayRows(members), centers, ctx.device), ctx.device)


class ProbCover(Strategy):
    """probcover: greedy max coverage of δ-balls (Yehuda et al., NeurIPS 2022)."""
    name = "probcover"
    needs = frozenset({"paired"})
    options = ("delta", "clusters")
    summary = ("greedy max coverage of δ-balls around points (paired + pool), δ auto: the largest with 95% "
               "pure balls under k-means (--clusters); random once all is covered")
    paper = "Yehuda, Dekel, Hacohen, Weinshall, NeurIPS 2022"
    shardable = True
    shard_keep = PER_SHARD  # picks per shard before the merge's greedy cover

    def gain(self, ctx: Context):
        """The δ-ball graph from the pool rows ctx.rows to the ball members: (src pool rows, dst members,
        covered members)."""
        paired, points = points_of(ctx)
        n_paired, n_all = len(paired), points.n
        rng, members_at, members = ball_members(ctx, points)
        delta = ctx.opts.delta
        if delta == "auto":
            delta, purity = purity_delta(ctx, points, members)
            ctx.attrs.update(delta_auto=delta, purity=purity)
        cut = 1.0 - delta * delta / 2.0
        pool_rows = ArrayRows(points.take(np.arange(n_paired, n_all))) if isinstance(points, ArrayRows) \
            else points.parts[1]
        # a sample of the whole pool's rows says how many edges it would have (the same in every shard)
        probe = np.sort(rng.choice(ctx.pool.n, min(ctx.pool.n, ESTIMATE_ROWS), replace=False))
        est = len(self._edges(ctx, ArrayRows(take(pool_rows, probe)), members, cut)[0]) * ctx.pool.n / len(probe)
        if est > MAX_EDGES:
            keep = np.sort(rng.choice(len(members_at), max(1, int(len(members_at) * MAX_EDGES / est)), replace=False))
            members_at, members = members_at[keep], members[keep]
        if len(members_at) < n_all:
            ctx.notes.append(f"probcover: ball members counted on a seeded sample of {len(members_at)} of "
                             f"{n_all} points")
        a, b = ctx.rows
        src, dst = self._edges(ctx, RangeRows(pool_rows, a, b), members, cut)
        # members within δ of a paired item (a paired member is within 0 of itself) start covered
        (near,) = collect(sweep(ArrayRows(members), to_device(paired, ctx.device), MaxSim(), device=ctx.device))
        covered = (near >= cut) | (members_at < n_paired)
        ctx.attrs.update(delta=delta, members=len(members))
        return src + a, dst, covered

    def _edges(self, ctx, rows, members, cut):
        reducer = Edges()
        bias = torch.full((len(members),), -cut, dtype=torch.float32, device=ctx.device)
        collect(sweep(rows, to_device(members, ctx.device), reducer, device=ctx.device, bias=bias,
                      chunk_size=ctx.inputs.chunk_size, precision=ctx.inputs.precision))
        return reducer.pairs()

    def allocate(self, ctx: Context, gain) -> Allocation:
        src, dst, covered = gain
        ctx.attrs["edges"] = len(src)
        rows, score = greedy_cover(src, dst, covered, ctx.selectable, ctx.budget,
                                   lambda: ctx.progress("probcover", 1, ctx.budget))
        return _with_fill(rows, score, permutation_rank(ctx.pool.n, ctx.inputs.seed), np.flatnonzero(ctx.selectable),
                          ctx.budget)

    def shard_map(self, ctx: Context, gain):
        src, dst, covered = gain
        a, b = ctx.rows
        keep = self.shard_keep * ctx.budget
        picks, _ = greedy_cover(src, dst, covered, ctx.selectable, keep, lambda: ctx.progress("probcover", 1, keep))
        rank = permutation_rank(ctx.pool.n, ctx.inputs.seed)
        fill = lowest_ranks(rank, np.flatnonzero(ctx.selectable[a:b]) + a, ctx.budget)
        rows = np.concatenate([picks, np.setdiff1d(fill, picks)]).astype(np.int64)
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
        balls = [dst[np.searchsorted(src, r):np.searchsorted(src, r, side="right")] for r in picks]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in balls] + [0] * (len(rows) - len(picks)))])
        return ({"row": rows, "rank": rank[rows], "ball_ptr": ptr.astype(np.int64),
                 "ball": np.concatenate(balls).astype(np.int32) if balls else np.zeros(0, np.int32),
                 "covered0": np.flatnonzero(covered).astype(np.int32)},
                {"members": int(len(covered)), "greedy_kept": int(len(picks)), "edges": int(len(src))})

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        n = int(shards[0].attrs["members"])
        covered = np.zeros(n, dtype=bool)
        covered[shards[0].data["covered0"]] = True
        src, dst, rows, rank = [], [], [], []
        for s in shards:
            ptr = s.data["ball_ptr"]
            for k, r in enumerate(s.data["row"]):
                ball = s.data["ball"][ptr[k]:ptr[k + 1]]
                src.append(np.full(len(ball), r, np.int64))
                dst.append(ball)
            rows.append(s.data["row"])
            rank.append(s.data["rank"])
        rows, rank = np.concatenate(rows), np.concatenate(rank)
        local = {int(r): i for i, r in enumerate(rows)}  # candidate rows numbered 0..m-1 (by pool row)
        order = np.argsort(rows, kind="stable")
        renum = np.empty(len(rows), np.int64)
        renum[order] = np.arange(len(rows))
        src = renum[np.array([local[int(r)] for r in np.concatenate(src)], dtype=np.int64)] if src else np.zeros(0, np.int64)
        picks, score = greedy_cover(src, np.concatenate(dst) if dst else np.zeros(0, np.int32), covered,
                                    np.ones(len(rows), bool), budget)
        sorted_rows = rows[order]
        chosen = sorted_rows[picks] if len(picks) else np.zeros(0, np.int64)
        by_rank = np.zeros(int(sorted_rows.max()) + 1 if len(rows) else 0, np.int64)
        by_rank[rows] = rank
        alloc = _with_fill(chosen, score, by_rank, np.sort(rows), budget)
        alloc.attrs["covered_members"] = int(covered.sum() + sum(score))
        return alloc

    def reason(self, score, parts, attrs):
        if not score > 0:
            return "fill (random): everything was covered already"
        return f"its ball of radius δ holds {score:.0f} items no captioned or chosen item covers yet"


def greedy_cover(src: np.ndarray, dst: np.ndarray, covered: np.ndarray, selectable: np.ndarray, budget: int,
                 step=None) -> tuple[np.ndarray, list]:
    """Greedy max coverage: up to `budget` times the selectable row (of src) whose ball holds the most
    uncovered members (ties: the lower row), its ball then covered; stops when nothing is left to cover.
    Returns the rows and the number each newly covered."""
    covered = covered.copy()
    n = len(selectable)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))  # ball of row u: dst[start[u]:start[u+1]]
    by_member = np.argsort(dst, kind="stable")
    m_start = np.searchsorted(dst[by_member], np.arange(len(covered) + 1))  # rows whose ball holds member v
    count = np.bincount(src[~covered[dst]], minlength=n).astype(np.int64)
    count[~selectable] = -1
    rows, score = [], []
    for _ in range(budget):
        u = int(np.argmax(count)) if n else 0  # ties: the lower row
        if n == 0 or count[u] <= 0:
            break
        rows.append(u)
        score.append(int(count[u]))
        count[u] = -1
        ball = dst[start[u]:start[u + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        if len(new):
            holders = np.concatenate([by_member[m_start[v]:m_start[v + 1]] for v in new])
            np.subtract.at(count, src[holders], 1)
            count[rows] = -1
            count[~selectable] = -1
        if step is not None:
            step()
    return np.array(rows, np.int64), score


def _with_fill(rows: np.ndarray, score: list, rank: np.ndarray, candidates: np.ndarray, budget: int) -> Allocation:
    """The greedy's picks, then (once nothing is left to cover) the lowest places of the seeded permutation
    among the other candidates: the random rest, the same in one process and in a merge."""
    fill = budget - len(rows)
    notes = []
    if fill:
        rest = np.setdiff1d(candidates, rows)
        rows = np.concatenate([rows, lowest_ranks(rank, rest, fill)])
        score = list(score) + [0] * fill
        notes.append(f"probcover: nothing left to cover after {budget - fill} picks")
    return Allocation(np.asarray(rows, np.int64), np.array(score, np.float32), fill=fill,
                      fill_rule="random" if fill else "", notes=notes)


register(ProbCover())
