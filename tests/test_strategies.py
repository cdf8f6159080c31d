"""The strategy registry (SPEC §5), the fill and the already-paired rule (SPEC §3), and every strategy
against a direct implementation on small random data: both sides, raw and through a head."""

import h5py
import numpy as np
import pytest
import torch

from alsel import strategies
from alsel.clustering import kmeans
from alsel.errors import AlselError
from alsel.head import Head
from alsel.scoring import save_scores, score_pool
from alsel.selection import read_selection
from alsel.store import load_paired, open_store, write_store
from alsel.strategies import Inputs, select
from alsel.strategies.probcover import DELTA_GRID
from alsel.thresholds import ThresholdParams, make_thresholds
from conftest import MODEL, random_paired, stored, unit, write_paired
from reference import (ref_auto_delta, ref_c, ref_hn_order, ref_probcover, ref_typicality_per_cluster,
                       ref_typiclust, ref_xi, unit64)

CPU = torch.device("cpu")
SPEC_NAMES = {"hn", "hn-density", "random", "coreset", "typiclust", "probcover", "ascmr", "ascmr-no-inter",
              "ascmr-no-density", "bald", "entropy", "schedule", "hn-learnability"}


def test_the_registry_holds_the_spec_names_and_reads_tokens():
    assert set(strategies.names()) == SPEC_NAMES
    s, opts, explicit = strategies.resolve("hn-texts-top3-mini-counting-fill-closest")
    assert s.name == "hn" and (opts.select, opts.top_k, opts.batch, opts.weight, opts.fill) == \
        ("texts", 3, "mini", "counting", "closest")
    assert explicit == {"select", "top_k", "batch", "weight", "fill"}
    assert s.canonical(opts) == "hn-texts-top3-mini-counting-fill-closest"
    assert strategies.resolve("hn-density-lambda2")[0].name == "hn-density"  # the longest name first
    for spec in ("hn-images-top1-full-surplus-loss-fill-random", "hn"):
        s, opts, _ = strategies.resolve(spec)
        assert s.canonical(opts) == "hn"  # defaults are left out
    s, opts, _ = strategies.resolve("probcover-delta0.35-clusters8")
    assert (opts.delta, opts.clusters) == (0.35, 8) and s.canonical(opts) == "probcover-delta0.35-clusters8"
    s, opts, _ = strategies.resolve("typiclust", max_clusters=50, select="texts")
    assert s.canonical(opts) == "typiclust-texts-maxclusters50"
    for bad, msg in (("magic", "unknown strategy"), ("hn-top0", ">= 1"), ("hn-sideways", "cannot read"),
                     ("typiclust-top3", "cannot read"), ("hn-top2-top3", "given twice")):
        with pytest.raises(AlselError, match=msg):
            strategies.resolve(bad)
    with pytest.raises(AlselError, match="contradicts the token"):
        strategies.resolve("hn-counting", weight="surplus")
    with pytest.raises(AlselError, match="not an option of random"):
        strategies.resolve("random", top_k=3)
    assert strategies.resolve("random", strict=False, top_k=3)[0].name == "random"


# --------------------------------------------------------------------------- data


def world(tmp_path, rng, select, n_images=12, n_pool=40, d=8, repeat_paired=0, noise=0.6):
    """A paired store and a pool of `select`; the pool's first `repeat_paired` rows are paired items."""
    images, texts, ti = random_paired(rng, n_images=n_images, d=d)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    base = texts if select == "images" else images
    rows = unit(base[rng.integers(0, len(base), n_pool)] + noise * rng.standard_normal((n_pool, d)))
    ids = [f"u{i}" for i in range(n_pool)]
    side = images if select == "images" else texts
    for r in range(repeat_paired):  # the same ids (and rows) as paired items of that side
        rows[r] = side[r]
        ids[r] = f"pimg{r}" if select == "images" else f"ptxt{r}"
    key = "image_ids" if select == "images" else "text_ids"
    pool = str(tmp_path / "u.h5")
    write_store(pool, **{select: rows, key: ids}, model=MODEL, pretrained="test", created_by="test")
    return paired, pool, ti


def random_head(d, seed=0):
    head = Head(d, d)
    head.reset("random", torch.Generator().manual_seed(seed))
    return head


def in_space(head, rows, side):
    """Rows through a head in float64 (the reference's view of the current space)."""
    if head is None:
        return unit64(rows)
    lin = getattr(head, side)
    return unit64(unit64(rows) @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy())


def run(name, paired, pool, select_side, budget, head=None, seed=0, precision=None, **kw):
    with open_store(paired, need="paired") as p, open_store(pool) as u:
        return select(name, Inputs(pool=u, paired=p, budget=budget, head=head, seed=seed, device=CPU,
                                   precision=precision), select=select_side, **kw)


@pytest.mark.parametrize("name", ["random", "hn", "hn-learnability", "schedule"])
def test_a_selection_reads_the_pool_ids_once(tmp_path, monkeypatch, name):
    """One read of the pool's ids checks them, finds the paired ones and serves every scoring in the
    process (hn-learnability scores twice); with a scores file, the ids it writes are the pool's."""
    from alsel import h5file

    rng = np.random.default_rng(2)
    paired, pool, ti = world(tmp_path, rng, "images", n_pool=40, repeat_paired=3)
    read = []
    real = h5file.read_id_bytes
    monkeypatch.setattr(h5file, "read_id_bytes", lambda ds, path, a=0, b=None: read.append((ds.name, a, b))
                        or real(ds, path, a, b))
    head = random_head(8, seed=1) if name == "hn-learnability" else None
    with open_store(paired, need="paired") as p, open_store(pool) as u:
        sel = select(name, Inputs(pool=u, paired=p, budget=5, head=head, device=CPU,
                                  scores_out=str(tmp_path / "s.h5") if name == "hn" else None))
    assert [r for r in read if r[0] == "/images/id"] == [("/images/id", 0, 40)]
    assert not set(sel.rows) & {0, 1, 2}
    if name == "hn":
        with h5py.File(tmp_path / "s.h5", "r") as f:
            assert [x.decode() for x in f["id"][:]] == ["pimg0", "pimg1", "pimg2"] + [f"u{i}" for i in range(3, 40)]
            assert f["paired"][:].tolist() == [1, 1, 1] + [0] * 37


# --------------------------------------------------------------------------- hn, the fill, /closest, /paired


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("fill", ["random", "closest", "row"])
def test_hn_takes_positive_scores_then_the_fill(tmp_path, select_side, fill):
    rng = np.random.default_rng(1)
    paired, pool, ti = world(tmp_path, rng, select_side, repeat_paired=3, noise=2.0)
    xi = ref_xi(stored(paired, "images"), stored(paired, "texts"), ti, select_side, margin=-0.8, form="margin")
    c = ref_c(stored(pool, select_side), stored(paired, "images"), stored(paired, "texts"), ti, xi, select_side)
    score, closest = np.where(c > 0, c, 0).sum(axis=1), c.max(axis=1)
    selectable = np.arange(40) >= 3
    assert 3 < ((score > 0) & selectable).sum() < 20  # some positives, a fill
    sel = run("hn", paired, pool, select_side, 25, seed=4, fill=fill, margin=-0.8, form="margin")
    want = ref_hn_order(score, closest, selectable, 25, fill, 4)
    assert list(sel.rows) == want
    n_fill = int((score[want] <= 0).sum())
    assert sel.attrs["fill_count"] == n_fill and sel.attrs["fill"] == f"{n_fill} {fill}"
    assert any(f"{n_fill} of 25 items came from the fill ({fill})" in n for n in sel.notes)
    assert "3 pool items are already paired and were left out" in sel.notes
    assert np.all(sel.score[-n_fill:] == 0) and np.allclose(sel.score[:25 - n_fill], score[want[:25 - n_fill]],
                                                            rtol=1e-4)


def test_scores_files_carry_closest_and_paired_and_select_reads_them(tmp_path, run_cli):
    rng = np.random.default_rng(2)
    paired, pool, ti = world(tmp_path, rng, "images", repeat_paired=4)
    xi = ref_xi(stored(paired, "images"), stored(paired, "texts"), ti)
    c = ref_c(stored(pool, "images"), stored(paired, "images"), stored(paired, "texts"), ti, xi, "images")
    for precision in ("fp32", "bf16", "fp16"):
        out = tmp_path / f"s_{precision}.h5"
        code, _, err = run_cli("score", "--paired", paired, "--unpaired", pool, "--out", out, "--precision", precision,
                               "--device", "cpu")
        assert code == 0, err
        assert "note: 4 pool items are already paired and were left out" in err
        with h5py.File(out) as f:
            got, flag, count, score = f["closest"][:], f["paired"][:], f["count"][:], f["score"][:]
        assert list(flag) == [1] * 4 + [0] * 36
        assert np.all(np.isneginf(got[:4])) and not count[:4].any() and not score[:4].any()
        assert np.allclose(got[4:], c[4:].max(axis=1), atol=1e-5, rtol=0)
    sel_out = tmp_path / "sel.h5"
    code, _, err = run_cli("select", "--scores", tmp_path / "s_bf16.h5", "--budget", "36", "--fill", "closest",
                           "--out", sel_out)
    assert code == 0, err
    assert "note: 4 pool items are already paired and were left out" in err
    sel = read_selection(str(sel_out))
    assert not set(sel.rows) & {0, 1, 2, 3}
    code, _, err = run_cli("select", "--scores", tmp_path / "s_bf16.h5", "--budget", "37", "--out", sel_out)
    assert code == 2 and "larger than the pool (36 items that may be chosen; 4 more are already paired)" in err


# --------------------------------------------------------------------------- every strategy: paired items left out


@pytest.mark.parametrize("name", ["random", "coreset", "hn", "hn-density", "typiclust", "probcover"])
@pytest.mark.parametrize("select_side", ["images", "texts"])
def test_already_paired_items_are_never_selected(tmp_path, name, select_side):
    rng = np.random.default_rng(3)
    paired, pool, _ = world(tmp_path, rng, select_side, repeat_paired=5)
    sel = run(name, paired, pool, select_side, 35, clusters=3) if name in ("hn-density", "probcover") else \
        run(name, paired, pool, select_side, 35)
    assert sorted(sel.rows) == list(range(5, 40)) and sel.attrs["paired_left_out"] == 5
    assert "5 pool items are already paired and were left out" in sel.notes
    with pytest.raises(AlselError, match="larger than the pool"):
        run(name, paired, pool, select_side, 36)


# --------------------------------------------------------------------------- TypiClust


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("max_clusters", [500, 4])
def test_typiclust_matches_a_direct_implementation(tmp_path, small_tiles, select_side, with_head, max_clusters):
    rng = np.random.default_rng(4)
    paired, pool, _ = world(tmp_path, rng, select_side, n_images=9, n_pool=45, repeat_paired=2)
    head = random_head(8) if with_head else None
    side = "image" if select_side == "images" else "text"
    P = in_space(head, stored(paired, select_side), side)
    U = in_space(head, stored(pool, select_side), side)
    budget = 12
    k = min(len(P) + budget, max_clusters)
    _, assign = kmeans(np.concatenate([P, U]).astype(np.float32), k, seed=3)  # the library's k-means, tested apart
    selectable = np.arange(45) >= 2
    want, typ = ref_typiclust(P, U, assign, budget, selectable)
    sel = run("typiclust", paired, pool, select_side, budget, head=head, seed=3, max_clusters=max_clusters)
    assert list(sel.rows) == want
    assert np.allclose(sel.score, typ, rtol=1e-4)


def test_typiclust_and_probcover_spread_over_separated_clusters(tmp_path):
    """Eight tight, far-apart clusters; the paired items sit in cluster 0: a batch of 7 takes one item from
    each of the 7 other clusters."""
    rng = np.random.default_rng(5)
    centers = unit(rng.standard_normal((8, 16)) * 3)
    owner = np.repeat(np.arange(8), 30)
    pool_rows = unit(centers[owner] + 0.02 * rng.standard_normal((240, 16)))
    pimg = unit(centers[[0, 0, 0]] + 0.02 * rng.standard_normal((3, 16)))
    write_store(tmp_path / "p.h5", images=pimg, image_ids=["a", "b", "c"], texts=pimg, text_ids=["ta", "tb", "tc"],
                text_image=np.arange(3), model=MODEL, pretrained="t", created_by="t")
    write_store(tmp_path / "u.h5", images=pool_rows, image_ids=[f"u{i}" for i in range(240)], model=MODEL,
                pretrained="t", created_by="t")
    for name, kw in (("typiclust", {}), ("probcover", {"clusters": 8})):
        sel = run(name, str(tmp_path / "p.h5"), str(tmp_path / "u.h5"), "images", 7, **kw)
        assert sorted(owner[sel.rows]) == [1, 2, 3, 4, 5, 6, 7], name


# --------------------------------------------------------------------------- ProbCover


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("delta", [0.45, 0.8, "auto"])
def test_probcover_matches_a_direct_implementation(tmp_path, small_tiles, select_side, with_head, delta):
    rng = np.random.default_rng(6)
    paired, pool, _ = world(tmp_path, rng, select_side, n_images=7, n_pool=50, d=5, repeat_paired=2)
    head = random_head(5, seed=1) if with_head else None
    side = "image" if select_side == "images" else "text"
    P = in_space(head, stored(paired, select_side), side)
    U = in_space(head, stored(pool, select_side), side)
    sel = run("probcover", paired, pool, select_side, 15, head=head, seed=2, delta=delta, clusters=4)
    if delta == "auto":
        _, assign = kmeans(np.concatenate([P, U]).astype(np.float32), 4, seed=2)
        delta = ref_auto_delta(np.concatenate([P, U]), assign, DELTA_GRID)
        assert sel.attrs["delta"] == pytest.approx(delta)
    want, fill = ref_probcover(P, U, 15, delta, np.arange(50) >= 2, 2)
    assert list(sel.rows) == want and sel.attrs["fill_count"] == fill


def test_probcover_fills_at_random_once_everything_is_covered(tmp_path):
    rng = np.random.default_rng(7)
    paired, pool, _ = world(tmp_path, rng, "images", n_pool=30)
    sel = run("probcover", paired, pool, "images", 20, delta=1.9)  # one ball covers the sphere's cap
    assert sel.attrs["fill_count"] >= 18 and any("nothing left to cover" in n for n in sel.notes)
    again = run("probcover", paired, pool, "images", 20, delta=1.9)
    assert list(again.rows) == list(sel.rows)


# --------------------------------------------------------------------------- hn-density


def brute_allocation(gains, shares, budget, lam):
    """The best counts by enumeration (small k): max Σ top gains - λ Σ (b/B - t)²."""
    import itertools

    best, arg = -np.inf, None
    for counts in itertools.product(*[range(min(len(g), budget) + 1) for g in gains]):
        if sum(counts) != budget:
            continue
        v = sum(float(np.sum(g[:b])) for g, b in zip(gains, counts)) - lam * sum(
            (b / budget - t) ** 2 for b, t in zip(counts, shares))
        if v > best + 1e-12:
            best, arg = v, counts
    return arg


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("lam,mix", [(1.0, 0.5), (20.0, 1.0), (0.0, 0.0)])
def test_hn_density_matches_a_direct_implementation(tmp_path, select_side, with_head, lam, mix):
    rng = np.random.default_rng(8)
    paired, pool, ti = world(tmp_path, rng, select_side, n_pool=30, repeat_paired=2)
    head = random_head(8, seed=2) if with_head else None
    side = "image" if select_side == "images" else "text"
    X, T = in_space(head, stored(paired, "images"), "image"), in_space(head, stored(paired, "texts"), "text")
    U = in_space(head, stored(pool, select_side), side)
    xi = ref_xi(X, T, ti, select_side)
    c = ref_c(U, X, T, ti, xi, select_side)
    gain = np.where(c > 0, c, 0).sum(axis=1)
    budget = 8
    _, assign = kmeans(U.astype(np.float32), 3, seed=5)
    selectable = np.arange(30) >= 2
    perm = np.random.default_rng(5).permutation(30)
    rank = np.where(gain > 0, np.arange(30), np.argsort(perm))  # the fill's order (random) among zero gains
    ranked = [sorted([u for u in range(30) if assign[u] == cl and selectable[u]], key=lambda u: (-gain[u], rank[u]))
              for cl in range(3)]
    sizes = np.array([len(r) for r in ranked], dtype=float)
    shares = (1 - mix) * sizes / sizes.sum() + mix / 3
    top = np.sort(gain[selectable])[::-1][:budget].sum()
    counts = brute_allocation([gain[r] for r in ranked], shares, budget, lam * top if top > 0 else lam)
    want = sorted([u for r, b in zip(ranked, counts) for u in r[:b]], key=lambda u: (-gain[u], rank[u]))
    sel = run("hn-density", paired, pool, select_side, budget, head=head, seed=5, clusters=3, lam=lam,
              density_mix=mix)
    assert list(sel.rows) == want


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("fill", ["random", "closest"])
def test_hn_learnability_matches_a_direct_implementation(tmp_path, select_side, fill):
    """The score in the head's space minus the score in the raw space, positives first, then the fill."""
    rng = np.random.default_rng(11)
    paired, pool, ti = world(tmp_path, rng, select_side, n_pool=40, repeat_paired=2, noise=0.9)
    head = random_head(8, seed=4)
    side = "image" if select_side == "images" else "text"
    X, T = stored(paired, "images"), stored(paired, "texts")
    U = stored(pool, select_side)
    Xh, Th, Uh = in_space(head, X, "image"), in_space(head, T, "text"), in_space(head, U, side)
    c_raw = ref_c(unit64(U), unit64(X), unit64(T), ti, ref_xi(unit64(X), unit64(T), ti, select_side), select_side)
    c_head = ref_c(Uh, Xh, Th, ti, ref_xi(Xh, Th, ti, select_side), select_side)
    gain = np.where(c_head > 0, c_head, 0).sum(axis=1) - np.where(c_raw > 0, c_raw, 0).sum(axis=1)
    selectable = np.arange(40) >= 2
    assert 2 < ((gain > 0) & selectable).sum() < 20
    want = ref_hn_order(gain, c_head.max(axis=1), selectable, 20, fill, 6)
    sel = run("hn-learnability", paired, pool, select_side, 20, head=head, seed=6, fill=fill)
    assert list(sel.rows) == want
    n_pos = int((gain[want] > 0).sum())
    assert np.allclose(sel.score[:n_pos], gain[want[:n_pos]], rtol=1e-4, atol=1e-5)
    assert sel.attrs["fill_count"] == 20 - n_pos
    with pytest.raises(AlselError, match="needs a retrieval head"):
        run("hn-learnability", paired, pool, select_side, 5)


@pytest.mark.parametrize("select_side", ["images", "texts"])
@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_schedule_matches_a_direct_implementation(tmp_path, small_tiles, select_side, with_head, precision):
    """Coverage c at δ, then (1 - c)·B items by TypiClust and c·B by the hard-negative order among the rest;
    on the low-precision paths too (the distances to the paired set are exact there)."""
    rng = np.random.default_rng(12)
    paired, pool, ti = world(tmp_path, rng, select_side, n_images=9, n_pool=45, repeat_paired=2, noise=0.9)
    head = random_head(8, seed=5) if with_head else None
    side = "image" if select_side == "images" else "text"
    X, T = in_space(head, stored(paired, "images"), "image"), in_space(head, stored(paired, "texts"), "text")
    P = X if select_side == "images" else T
    U = in_space(head, stored(pool, select_side), side)
    selectable = np.arange(45) >= 2
    near = np.sqrt(((U[:, None, :] - P[None, :, :]) ** 2).sum(-1)).min(axis=1)
    delta = float(np.round(np.quantile(near[selectable], 0.4), 3)) + 5e-4  # no distance sits on δ
    c = float((near[selectable] <= delta).mean())
    budget = 12
    n_hard = int(round(c * budget))
    assert 0 < n_hard < budget
    _, assign = kmeans(np.concatenate([P, U]).astype(np.float32), min(len(P) + budget, 500), seed=3)
    typical, _ = ref_typiclust(P, U, assign, budget - n_hard, selectable)
    rest = selectable.copy()
    rest[typical] = False
    cc = ref_c(U, X, T, ti, ref_xi(X, T, ti, select_side), select_side)
    hard = ref_hn_order(np.where(cc > 0, cc, 0).sum(axis=1), cc.max(axis=1), rest, n_hard, "random", 3)
    sel = run("schedule", paired, pool, select_side, budget, head=head, seed=3, delta=delta, precision=precision)
    assert list(sel.rows) == typical + hard
    assert list(sel.parts["hard"]) == [0.0] * (budget - n_hard) + [1.0] * n_hard
    assert sel.attrs["coverage"] == pytest.approx(c) and sel.attrs["hard_items"] == n_hard


def test_hn_density_spreads_where_hn_concentrates(tmp_path):
    """Pool items around one paired caption are the hardest negatives; hn takes all of them, hn-density
    spreads the batch over the pool's clusters."""
    rng = np.random.default_rng(9)
    d = 16
    centers = unit(rng.standard_normal((4, d)) * 3)
    images = unit(centers[np.repeat(np.arange(4), 5)] + 0.3 * rng.standard_normal((20, d)))
    texts = unit(images + 0.3 * rng.standard_normal((20, d)))
    write_store(tmp_path / "p.h5", images=images, image_ids=[f"i{k}" for k in range(20)], texts=texts,
                text_ids=[f"t{k}" for k in range(20)], text_image=np.arange(20), model=MODEL, pretrained="t",
                created_by="t")
    owner = np.repeat(np.arange(4), 25)
    spread = np.where(owner == 0, 0.15, 0.3)[:, None]  # cluster 0: close to its captions, hard negatives
    pool_rows = unit(centers[owner] + spread * rng.standard_normal((100, d)))
    write_store(tmp_path / "u.h5", images=pool_rows, image_ids=[f"u{k}" for k in range(100)], model=MODEL,
                pretrained="t", created_by="t")
    hn = run("hn", str(tmp_path / "p.h5"), str(tmp_path / "u.h5"), "images", 12)
    dense = run("hn-density", str(tmp_path / "p.h5"), str(tmp_path / "u.h5"), "images", 12, clusters=4, lam=5.0)
    assert len(set(owner[hn.rows])) <= 2
    assert len(set(owner[dense.rows])) == 4


# --------------------------------------------------------------------------- one registration: both commands


class FirstRows(strategies.Strategy):
    """A toy strategy: the lowest selectable rows."""

    name = "toy-first"
    summary = "the first pool rows (a test)"
    paper = "-"

    def gain(self, ctx):
        return -np.arange(ctx.pool.n, dtype=np.float64)

    def allocate(self, ctx, gain):
        rows = np.flatnonzero(ctx.selectable)[:ctx.budget]
        return strategies.Allocation(rows, gain[rows])


def test_a_registered_strategy_runs_through_select_and_simulate(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=300, captions=2, classes=6, dim=16, seed=1)
    strategies.register(FirstRows())
    try:
        code, out, err = run_cli("strategies")
        assert code == 0 and "toy-first" in out and "and auto, in select (its default)" in out
        code, _, err = run_cli("select", "--strategy", "toy-first-texts", "--paired", w["paired"], "--unpaired",
                               w["pool_texts"], "--budget", "5", "--out", tmp_path / "sel.h5")
        assert code == 0, err
        sel = read_selection(str(tmp_path / "sel.h5"))
        assert list(sel.rows) == [0, 1, 2, 3, 4] and sel.attrs["strategy"] == "toy-first-texts"
        code, _, err = run_cli("simulate", "--paired", w["paired"], "--oracle", w["oracle"], "--test", w["test"],
                               "--out", tmp_path / "sim", "--budget", "10", "--rounds", "1", "--strategies",
                               "toy-first,random", "--epochs", "2", "--device", "cpu")
        assert code == 0, err
        first = read_selection(str(tmp_path / "sim" / "runs" / "toy-first" / "seed0" / "round0" / "selection.h5"))
        assert list(first.rows) == list(range(10))
    finally:
        strategies.REGISTRY.pop("toy-first")
    code, _, err = run_cli("select", "--strategy", "toy-first", "--unpaired", w["pool_texts"], "--budget", "5",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "unknown strategy" in err


# --------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("name", ["hn-density", "typiclust", "probcover"])
def test_new_strategies_in_select_with_a_head_and_texts(tmp_path, run_cli, name):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=300, captions=2, classes=6, dim=16, seed=2)
    code, _, err = run_cli("train", "--paired", w["paired"], "--out", tmp_path / "h.pt", "--init", "random",
                           "--epochs", "2", "--device", "cpu")
    assert code == 0, err
    csv = tmp_path / "sel.csv"
    code, out, err = run_cli("select", "--strategy", name, "--select", "texts", "--paired", w["paired"],
                             "--unpaired", w["pool_texts"], "--head", tmp_path / "h.pt", "--budget", "12", "--out",
                             tmp_path / "sel.h5", "--csv", csv, "--device", "cpu", "--seed", "3")
    assert code == 0, err
    sel = read_selection(str(tmp_path / "sel.h5"))
    assert sel.attrs["strategy"] == f"{name}-texts" and sel.attrs["select"] == "texts" and len(set(sel.rows)) == 12
    with open_store(w["paired"]) as p:
        head = __import__("alsel.head", fromlist=["load_head"]).load_head(str(tmp_path / "h.pt"), p)
    assert sel.attrs["head"] == head.fingerprint()
    assert csv.read_text().splitlines()[0] == "rank,id,row,score"
    code, _, err = run_cli("select", "--strategy", name, "--unpaired", w["pool_texts"], "--budget", "3",
                           "--out", tmp_path / "x.h5", "--select", "texts")
    assert code == 2 and "needs a paired store (--paired)" in err and err.count("\n") == 1


def test_select_refuses_unread_and_contradicting_options(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=6, dim=16, seed=2)
    base = ["select", "--paired", w["paired"], "--unpaired", w["pool_images"], "--budget", "3", "--out",
            tmp_path / "s.h5"]
    code, _, err = run_cli(*base, "--strategy", "typiclust", "--top-k", "2")
    assert code == 2 and "--top-k is not an option of typiclust" in err
    code, _, err = run_cli(*base, "--strategy", "hn-counting", "--weight", "surplus")
    assert code == 2 and "contradicts the token" in err
    code, _, err = run_cli(*base, "--strategy", "ascmr")
    assert code == 2 and "needs a pool of pairs" in err
    assert not (tmp_path / "s.h5").exists()


def test_scores_and_select_agree_with_the_library(tmp_path):
    """hn on saved score shards = hn computed in one go (same fill)."""
    rng = np.random.default_rng(10)
    paired, pool, ti = world(tmp_path, rng, "images", n_pool=40)
    with open_store(paired, need="paired") as st, open_store(pool, need="images") as u:
        p = load_paired(st)
        th = make_thresholds(p, ThresholdParams(margin=0.05), CPU)
        for i in range(2):
            save_scores(str(tmp_path / f"s{i}.h5"), score_pool(u, p, th, "surplus", CPU, (i, 2)))
    a = select("hn", Inputs(pool=None, budget=30, scores=[str(tmp_path / "s1.h5"), str(tmp_path / "s0.h5")]),
               fill="closest")
    b = run("hn", paired, pool, "images", 30, margin=0.05, fill="closest")
    assert list(a.rows) == list(b.rows) and a.attrs["fill_count"] == b.attrs["fill_count"] > 0


def test_select_hn_in_one_go_equals_score_then_select(tmp_path, run_cli):
    """`select --strategy hn --paired --unpaired [--thresholds]` = `score` + `select --scores`."""
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=300, captions=2, classes=6, dim=16, seed=4)
    run_cli("threshold", "--paired", w["paired"], "--out", tmp_path / "xi.h5", "--top-k", "2", "--precision", "fp32")
    run_cli("score", "--paired", w["paired"], "--unpaired", w["pool_images"], "--thresholds", tmp_path / "xi.h5",
            "--weight", "counting", "--out", tmp_path / "s.h5", "--precision", "fp32")
    code, _, err = run_cli("select", "--scores", tmp_path / "s.h5", "--budget", "30", "--fill", "closest",
                           "--out", tmp_path / "a.h5")
    assert code == 0, err
    for extra in (["--thresholds", tmp_path / "xi.h5"], ["--top-k", "2"]):
        code, _, err = run_cli("select", "--strategy", "hn-counting", "--paired", w["paired"], "--unpaired",
                               w["pool_images"], "--budget", "30", "--fill", "closest", "--out", tmp_path / "b.h5",
                               "--precision", "fp32", *extra)
        assert code == 0, err
        a, b = read_selection(str(tmp_path / "a.h5")), read_selection(str(tmp_path / "b.h5"))
        assert list(a.rows) == list(b.rows) and a.attrs["strategy"] == b.attrs["strategy"] == \
            "hn-top2-counting-fill-closest"
    code, _, err = run_cli("select", "--scores", tmp_path / "s.h5", "--budget", "3", "--weight", "surplus",
                           "--out", tmp_path / "c.h5")
    assert code == 2 and "--weight surplus contradicts the file" in err


def test_select_without_a_strategy_runs_the_default(tmp_path, run_cli):
    """auto: advised on the paired store, then the advice's choice (hn when --scores are given)."""
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=120, captions=2, classes=5, dim=16, seed=1, paired=0.3)
    common = ("--paired", w["paired"], "--unpaired", w["pool_images"], "--budget", "6", "--device", "cpu")
    code, _, err = run_cli("select", *common, "--out", tmp_path / "a.h5")
    assert code == 0, err
    assert strategies.DEFAULT == "auto" and "note: auto chose" in err
    code, _, err = run_cli("select", "--strategy", "auto", *common, "--out", tmp_path / "b.h5")
    a, b = read_selection(str(tmp_path / "a.h5")), read_selection(str(tmp_path / "b.h5"))
    assert int(a.attrs["auto"]) == 1 and a.attrs["strategy"] == b.attrs["strategy"]
    assert list(a.rows) == list(b.rows) and a.attrs["auto_advice"] == b.attrs["auto_advice"]


def test_concatenated_rows_load_take_and_release_across_parts():
    """ConcatRows (the paired items, then the pool, as one source): a range inside one part is that part's
    rows, a range across parts their concatenation; take finds rows in either part."""
    from alsel.stream import ArrayRows, ConcatRows

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    both = ConcatRows(ArrayRows(a), ArrayRows(b))
    whole = np.concatenate([a, b])
    assert (both.n, both.d) == (12, 3)
    for start, stop in ((0, 5), (1, 4), (5, 12), (6, 9), (3, 8), (0, 12), (4, 6)):
        assert np.array_equal(both.load(start, stop).numpy(), whole[start:stop]), (start, stop)
    rows = np.array([0, 4, 5, 11])
    assert np.array_equal(both.take(rows), whole[rows])
    both.release(0, 12)


@pytest.mark.parametrize("n,k", [(1, 1), (50, 0), (50, 7), (50, 50), (50, 80), (10_000, 100)])
def test_lowest_ranks_is_the_k_lowest_of_a_full_sort(n, k):
    """The partition-then-sort of random's draw against the plain sort of every row it replaced."""
    from alsel.strategies.baselines import lowest_ranks, permutation_rank

    rank = permutation_rank(3 * n, seed=n + k)
    rows = np.sort(np.random.default_rng(k).choice(3 * n, n, replace=False))
    np.testing.assert_array_equal(lowest_ranks(rank, rows, k), rows[np.argsort(rank[rows], kind="stable")[:k]])


def test_chunk_typicality_equals_the_per_cluster_computation():
    """The chunked, device-resident typicality (one upload per chunk, each cluster's references uploaded
    once) against the per-cluster code it replaced (tests/reference.py), bit for bit: clusters with 0, fewer than 20 and
    more than 20 references, rows that are their own references (excluded), a cluster with no rows."""
    from alsel.strategies.typiclust import ClusterRefs, chunk_typicality

    rng = np.random.default_rng(5)
    k, d = 7, 16
    sample = unit(rng.standard_normal((400, d))).astype(np.float32)
    sample_cluster = rng.choice(k, 400, p=[0.0, 0.02, 0.03, 0.25, 0.3, 0.4, 0.0])  # 0 and 6: no references
    picked = rng.permutation(10_000)[:400]  # the sample's point ids
    x = unit(rng.standard_normal((600, d))).astype(np.float32)
    point_ids = rng.permutation(10_000)[:600]
    point_ids[:50] = picked[:50]  # these rows are sampled points themselves
    x[:50] = sample[:50]
    cluster = rng.choice(k - 1, 600)  # cluster 6 has no rows
    ok = np.flatnonzero(rng.random(600) < 0.9)
    per = np.bincount(cluster[ok], minlength=k)
    by_cluster = ok[np.argsort(cluster[ok], kind="stable")]
    got = chunk_typicality(x, point_ids, by_cluster, per, ClusterRefs(sample, picked, sample_cluster, k, "cpu"),
                           torch.device("cpu"))
    ends = np.cumsum(per)
    for c in range(k):
        mine = by_cluster[ends[c] - per[c]:ends[c]]
        refs = np.flatnonzero(sample_cluster == c)
        want = ref_typicality_per_cluster(x[mine], point_ids[mine], sample[refs], picked[refs])
        np.testing.assert_array_equal(got[ends[c] - per[c]:ends[c]], want)
    assert (got[np.isin(by_cluster, np.flatnonzero(cluster == 0))] == 0).all()  # no references: 0
    assert np.bincount(sample_cluster, minlength=k)[1] < 20 and (got > 0).sum() > 400
