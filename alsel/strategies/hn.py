"""hn and hn-density: the hard-negative score of SPEC §3 (Jo et al., arXiv 2405.16301) as the gain.

hn: positive scores first (highest first, ties: lower row), then the fill among the zero-score items
(`--fill random|closest|row`). hn-density: the same gains into ASCMR's density-aware allocation over
k-means clusters of the pool (in the current space), the best rows of each cluster, zero gains ordered
by the fill rule.

The scores come from score files (`Inputs.scores`: the shards of one `alsel score` run; their
threshold and weight parameters are then those of the files, and an option that contradicts them is an
error) or are computed here: ξ from `Inputs.thresholds` or from the paired store, then one sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import AlselError
from .scores import MergedScores, load_scores
from .base import Allocation, Context, Strategy, register

THRESHOLD_KEYS = ("select", "top_k", "batch", "batch_size", "margin", "form")


@dataclass
class HnGain:
    score: np.ndarray  # float32 per pool row
    closest: np.ndarray | None  # float32 per pool row (None: files without /closest)
    scores: MergedScores | None = None  # when read from files


class ScoredPool:
    """A pool known only through its score files (`alsel select --scores` without --unpaired): sizes, ids
    and fingerprint come from the files."""

    def __init__(self, merged: MergedScores):
        self.merged = merged
        self.path = merged.paths[0]
        self.model = str(merged.attrs.get("model", ""))
        self.select = str(merged.attrs["select"])
        self.attrs = {"image_root": str(merged.attrs.get("image_root", ""))}  # what the pool recorded
        self.n = len(merged.rows)
        self.images = self.texts = self.text_image = None

    def side(self, group: str):
        """The pool itself for its scored side (the other side is a one-line error)."""
        if group != self.select:
            raise AlselError(f"{self.path}: the scores are of pool {self.select}, not {group}")
        return self

    def fingerprint(self, group: str) -> str:
        """The pool fingerprint the score files record."""
        return str(self.merged.attrs["pool_fingerprint"])

    def ids_at(self, group: str, rows: np.ndarray) -> np.ndarray:
        """Ids of the given rows, read from the score files."""
        return self.merged.ids_at(np.asarray(rows, dtype=np.int64))


def scored_pool(paths: list[str]) -> ScoredPool:
    """The pool of a set of score files (all shards of one run)."""
    return ScoredPool(load_scores(list(paths)))


def hn_gain(ctx: Context) -> HnGain:
    """The hard-negative score (and closest) per pool row: from score files, or thresholds and a sweep here."""
    inputs = ctx.inputs
    if inputs.scores:
        merged = inputs.pool.merged if isinstance(inputs.pool, ScoredPool) else load_scores(list(inputs.scores))
        return _from_files(ctx, merged)
    res = score_in_space(ctx, inputs.head, inputs.thresholds)
    if inputs.scores_out is not None:
        from ..scoring import save_scores

        save_scores(inputs.scores_out, res)
    ctx.attrs.update({k: res.attrs[k] for k in ("paired_fingerprint", "thresholds_fingerprint", "weight")})
    return HnGain(res.score, res.closest)


def score_in_space(ctx: Context, head, thresholds: str | None = None, label: str = "scoring"):
    """SPEC §3's scores of the pool (a scoring.ScoreResult) in the space of `head` (None: the raw
    embeddings), with ξ from `thresholds` (a file) or computed from the paired store in that space."""
    from ..head import through_head
    from ..scoring import score_pool
    from ..store import load_paired
    from ..thresholds import ThresholdParams, load_thresholds, make_thresholds

    inputs, opts = ctx.inputs, ctx.opts
    paired = through_head(load_paired(inputs.paired), head, ctx.device)
    if thresholds is not None:
        th = load_thresholds(thresholds, paired)
    else:
        params = ThresholdParams(**{k: getattr(opts, k) for k in THRESHOLD_KEYS}, seed=inputs.seed)
        th = make_thresholds(paired, params, ctx.device, inputs.chunk_size, precision=inputs.precision)
    a, b = ctx.rows
    res = score_pool(inputs.pool, paired, th, opts.weight, ctx.device, shard=inputs.shard or (0, 1),
                     chunk_size=inputs.chunk_size, head=head, precision=inputs.precision,
                     progress=lambda k: ctx.progress(label, k, b - a), ids=ctx.pool_ids)
    if (a, b) != (0, ctx.pool.n):  # a shard: full-length arrays, nothing outside its rows
        for name, fill in (("score", 0.0), ("count", 0), ("closest", -np.inf)):
            full = np.full(ctx.pool.n, fill, dtype=getattr(res, name).dtype)
            full[a:b] = getattr(res, name)
            setattr(res, name, full)
    return res


def file_options(opts, explicit: set, attrs: dict, path: str, keys):
    """Options fixed by a file: explicitly given ones must agree, the others are taken from it."""
    from .base import OPTION_SPECS

    values = {}
    for k in keys:
        if k not in attrs:
            raise AlselError(f"{path}: attribute {k!r} is missing")
        spec = OPTION_SPECS[k]
        have = spec.check(str(attrs[k]) if spec.kind == "choice" else float(attrs[k]), path)
        if k in explicit and getattr(opts, k) != have:
            raise AlselError(f"{path}: {spec.flag} {getattr(opts, k)} contradicts the file ({k} = {have})")
        values[k] = have
    return replace(opts, **values)


def _from_files(ctx: Context, merged: MergedScores) -> HnGain:
    path = merged.paths[0]
    pool = ctx.inputs.pool
    if not isinstance(pool, ScoredPool):  # scores of this pool?
        if len(merged.rows) != pool.side(ctx.select).n or merged.attrs["pool_fingerprint"] != pool.fingerprint(ctx.select):
            raise AlselError(f"{path}: the scores were computed for another pool than {pool.path}")
    head = "none" if ctx.head is None else ctx.head.fingerprint()
    if ctx.head is not None and str(merged.attrs.get("head", "none")) != head:
        raise AlselError(f"{path}: the scores were computed with another head than --head")
    ctx.leave_out(merged.paired)
    if merged.skipped is not None and merged.skipped.any():
        ctx.leave_out_skipped(merged.skipped)
    ctx.attrs.update({k: merged.attrs[k] for k in ("paired_fingerprint", "thresholds_fingerprint", "weight")
                      if k in merged.attrs})
    return HnGain(merged.score, merged.closest, merged)


def fill_rank(ctx: Context, g: HnGain) -> np.ndarray:
    """A rank per pool row: the row among positive scores (their ties), the fill order among the rest."""
    rule, n = ctx.opts.fill, len(g.score)
    rows = np.arange(n)
    if rule == "row":
        return rows
    if rule == "closest":
        if g.closest is None:
            raise AlselError(f"{ctx.inputs.scores[0]}: --fill closest needs /closest; score the pool again")
        order = np.lexsort((rows, -g.closest.astype(np.float64)))
    else:  # random: a seeded uniform order of the pool, so of any subset of it
        order = np.random.default_rng(ctx.inputs.seed).permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rows
    return np.where(g.score > 0, rows, rank)


def fill_key(ctx: Context, g: HnGain, rank: np.ndarray, rows: np.ndarray) -> dict:
    """What a shard keeps of `rows` for the merge to order them as one process would: their fill rank, and
    for --fill closest their /closest too (a shard knows only its own rows' /closest, so its ranks order its
    own rows right but are not comparable with another shard's)."""
    key = {"rank": rank[rows].astype(np.int64)}
    if ctx.opts.fill == "closest":
        key["closest"] = g.closest[rows].astype(np.float32)
    return key


def merged_rank(data: dict, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The fill rank of the shards' candidates (`data`: their datasets, concatenated), comparable across
    shards: for --fill closest the order of /closest (ties: the lower row) among them, which is the whole
    pool's order restricted to them; positive scores keep their row, as fill_rank gives them."""
    if "closest" not in data:
        return data["rank"]
    order = np.lexsort((rows, -data["closest"].astype(np.float64)))
    rank = np.empty(len(rows), np.int64)
    rank[order] = np.arange(len(rows))
    return np.where(score > 0, rows, rank)


def positives_then_fill(ctx: Context, g: HnGain) -> Allocation:
    """Positive scores first (highest first, ties: lower row), then the fill rule among the rest."""
    rank = fill_rank(ctx, g)
    cand = np.flatnonzero(ctx.selectable)
    rows = cand[np.lexsort((rank[cand], -g.score[cand].astype(np.float64)))][:ctx.budget]
    return _allocation(ctx, g, rows)


def _allocation(ctx: Context, g: HnGain, rows: np.ndarray) -> Allocation:
    score = np.where(g.score[rows] > 0, g.score[rows], 0).astype(np.float32)
    return Allocation(rows, score, fill=int((g.score[rows] <= 0).sum()), fill_rule=ctx.opts.fill)


class HardNegatives(Strategy):
    """hn: the score of Jo et al. (arXiv 2405.16301) as the gain, positives first, then the fill."""
    name = "hn"
    needs = frozenset({"paired"})
    options = ("top_k", "batch", "batch_size", "margin", "form", "weight", "fill")
    summary = ("hard-negative score (ξ from the max-of-hinges loss, SPEC §3) → positive scores first, then "
               "the fill")
    paper = "Jo et al., arXiv 2405.16301"

    def prepare(self, inputs, opts, explicit):
        """Score files fix the threshold and weight options, a ξ file the threshold options."""
        if inputs.scores:
            merged = inputs.pool.merged if isinstance(inputs.pool, ScoredPool) else load_scores(list(inputs.scores))
            return file_options(opts, explicit, merged.attrs, merged.paths[0], THRESHOLD_KEYS + ("weight",))
        if inputs.thresholds is not None:
            from ..h5file import attrs_dict, open_h5

            with open_h5(inputs.thresholds, "thresholds") as f:
                attrs = attrs_dict(f)
            from ..thresholds import ThresholdParams

            params = ThresholdParams.from_attrs(attrs, inputs.thresholds).as_attrs()
            return file_options(opts, explicit, params, inputs.thresholds, THRESHOLD_KEYS)
        return opts

    def check(self, inputs, opts, where):
        if not inputs.scores:  # score files hold what the paired store would give
            super().check(inputs, opts, where)

    def gain(self, ctx: Context) -> HnGain:
        return hn_gain(ctx)

    def allocate(self, ctx: Context, g: HnGain) -> Allocation:
        return positives_then_fill(ctx, g)

    shardable = True

    def shard_map(self, ctx: Context, g: HnGain):
        """The shard's B first rows in hn's order (positive scores first, then the fill's order, both computed
        over the whole pool): the merge's B first of their union are the single process's exactly."""
        a, b = ctx.rows
        rank = fill_rank(ctx, g)
        cand = np.flatnonzero(ctx.selectable[a:b]) + a
        keep = cand[np.lexsort((rank[cand], -g.score[cand].astype(np.float64)))][:ctx.budget]
        return {"row": keep, "score": g.score[keep].astype(np.float32), **fill_key(ctx, g, rank, keep)}, {}

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        data = {k: np.concatenate([s.data[k] for s in shards]) for k in shards[0].data if k != "id"}
        rows, score = data["row"], data["score"]
        rank = merged_rank(data, rows, score)
        keep = np.lexsort((rank, -score.astype(np.float64)))[:budget]
        return Allocation(rows[keep], np.where(score[keep] > 0, score[keep], 0).astype(np.float32),
                          fill=int((score[keep] <= 0).sum()), fill_rule=opts.fill)

    def reason(self, score, parts, attrs):
        if not score > 0:
            return (f"fill ({attrs.get('fill_rule', 'random')}): not a hard negative of any caption; chosen to "
                    f"complete the batch")
        if attrs.get("weight") == "counting":
            return f"hard negative: scores above the threshold ξ of {score:.0f} captions it does not belong to"
        return (f"hard negative: above the threshold ξ of captions it does not belong to, by {score:.3g} in all "
                f"(surplus)")


class HardNegativesDensity(HardNegatives):
    """hn-density: hn's gains into the density-aware allocation over k-means clusters of the pool."""
    name = "hn-density"
    options = HardNegatives.options + ("clusters", "lam", "density_mix")
    # one cluster per item to choose, uniform shares and a density term strong enough to hold them (up to a
    # few hundred items): each of B regions of the pool gives its hardest item. Chosen on a pilot
    # (benchmarks/strategy_report.md says which); the ASCMR defaults (20 clusters, λ = 1, mix 0.5) let the
    # gains decide and concentrate the batch where hn does.
    defaults = {"clusters": "auto", "lam": 100.0, "density_mix": 1.0}
    summary = ("hard-negative score → density-aware allocation over k-means clusters of the pool (ASCMR's), "
               "the best gains within each cluster, zero gains in fill order")
    paper = "Jo et al., arXiv 2405.16301; allocation of Zhang et al., TPAMI 2025"

    def check(self, inputs, opts, where):
        if isinstance(inputs.pool, ScoredPool):
            raise AlselError(f"{where}: hn-density clusters the pool: give --unpaired POOL.h5 with the scores")
        super().check(inputs, opts, where)

    shardable = True

    def allocate(self, ctx: Context, g: HnGain) -> Allocation:
        from ..ascmr import density_select, density_weight
        from ..clustering import kmeans

        opts = ctx.opts
        _, assign = kmeans(ctx.pool, min(ctx.clusters(), ctx.pool.n), ctx.inputs.seed, device=ctx.device,
                           transform=ctx.transform, chunk_size=ctx.inputs.chunk_size)
        gain = np.where(g.score > 0, g.score, 0).astype(np.float64)
        lam = density_weight(gain[ctx.selectable], ctx.budget, opts.lam)
        rows = density_select(gain, assign, ctx.budget, lam, opts.density_mix, fill_rank(ctx, g), ctx.selectable)
        ctx.attrs["clusters_used"] = int(assign.max()) + 1
        return _allocation(ctx, g, rows)

    def shard_map(self, ctx: Context, g: HnGain):
        """Per k-means cluster (centers from the seeded sample of the whole pool, the same in every shard) the
        B best selectable rows of the shard by (gain, fill rank), and the cluster's selectable count: the
        merge's allocation is then the single process's exactly."""
        from ..clustering import KMEANS_SAMPLE, assign, fit_on_sample
        from ..stream import RangeRows

        a, b = ctx.rows
        k = min(ctx.clusters(), ctx.pool.n)
        centers, _, _ = fit_on_sample(ctx.pool, k, ctx.inputs.seed, KMEANS_SAMPLE, device=ctx.device,
                                      transform=ctx.transform)
        cluster = assign(RangeRows(ctx.pool, a, b), centers, ctx.device, ctx.transform, ctx.inputs.chunk_size)
        gain = np.where(g.score[a:b] > 0, g.score[a:b], 0).astype(np.float64)
        full_rank = fill_rank(ctx, g)
        rank = full_rank[a:b]
        ok = ctx.selectable[a:b]
        keep = []
        for c in range(k):
            mine = np.flatnonzero(ok & (cluster == c))
            keep.append(mine[np.lexsort((rank[mine], -gain[mine]))[:ctx.budget]])
        keep = np.concatenate(keep).astype(np.int64)
        return ({"row": a + keep, "gain": gain[keep], **fill_key(ctx, g, full_rank, a + keep), "cluster": cluster[keep],
                 "sizes": np.bincount(cluster[ok], minlength=k).astype(np.int64)}, {"clusters_used": k})

    def merge(self, shards, opts, budget, seed, device) -> Allocation:
        from ..ascmr import allocate, density_weight, target_shares

        k = int(shards[0].attrs["clusters_used"])
        data = {key: np.concatenate([s.data[key] for s in shards]) for key in shards[0].data if key not in ("id", "sizes")}
        rows, gain, cluster = data["row"], data["gain"], data["cluster"]
        rank = merged_rank(data, rows, gain)
        sizes = sum(s.data["sizes"] for s in shards)
        ranked = [m[np.lexsort((rank[m], -gain[m]))] for m in (np.flatnonzero(cluster == c) for c in range(k))]
        lam = density_weight(gain, budget, opts.lam)
        counts = allocate([gain[r] for r in ranked], target_shares(sizes, opts.density_mix), budget, lam)
        chosen = np.concatenate([r[:n] for r, n in zip(ranked, counts)]).astype(np.int64)
        chosen = chosen[np.lexsort((rank[chosen], -gain[chosen]))]
        score = np.where(gain[chosen] > 0, gain[chosen], 0).astype(np.float32)
        alloc = Allocation(rows[chosen], score, fill=int((gain[chosen] <= 0).sum()), fill_rule=opts.fill)
        alloc.attrs["clusters_used"] = k
        return alloc

    def reason(self, score, parts, attrs):
        base = super().reason(score, parts, attrs)
        return base if not score > 0 else base + "; the hardest of its region of the pool (one k-means cluster)"


class HardNegativeLearnability(HardNegatives):
    """hn-learnability: the hard-negative score under the current head minus the score under the initial
    map (the raw embeddings): items the head finds hard that the raw CLIP space does not (JEST's
    learnability, Evans et al. 2024, with the raw space as the reference model)."""
    name = "hn-learnability"
    needs = frozenset({"paired", "head"})
    summary = ("hard-negative score in the head's space minus the score in the raw space (hard for the head, "
               "not for CLIP) → positive differences first, then the fill")
    paper = "Jo et al., arXiv 2405.16301; learnability of Evans et al. 2024 (JEST)"

    def check(self, inputs, opts, where):
        if inputs.scores:
            raise AlselError(f"{where}: hn-learnability scores the pool in two spaces (the head's and the raw); "
                             f"give --paired and --unpaired instead of --scores")
        if inputs.thresholds is not None:
            raise AlselError(f"{where}: hn-learnability computes ξ in each space; leave out --thresholds")
        super().check(inputs, opts, where)

    def gain(self, ctx: Context) -> HnGain:
        learned = score_in_space(ctx, ctx.head, label="scoring (head)")
        raw = score_in_space(ctx, None, label="scoring (raw)")
        ctx.attrs.update({k: learned.attrs[k] for k in ("paired_fingerprint", "weight")})
        with np.errstate(invalid="ignore"):  # inf - inf (fewer than k negatives, --form rank): no difference
            gain = np.nan_to_num(learned.score.astype(np.float64) - raw.score.astype(np.float64), nan=0.0)
        # no gain (the raw space finds it as hard or harder) is the fill's, as a zero score is hn's
        return HnGain(np.maximum(gain, 0).astype(np.float32), learned.closest)

    def reason(self, score, parts, attrs):
        if not score > 0:
            return (f"fill ({attrs.get('fill_rule', 'random')}): no harder for the head than for the raw space; "
                    f"chosen to complete the batch")
        unit = "captions" if attrs.get("weight") == "counting" else "surplus"
        return f"learnable hard negative: {score:.3g} more ({unit}) under the head than in the raw CLIP space"


register(HardNegatives())
register(HardNegativesDensity())
register(HardNegativeLearnability())
