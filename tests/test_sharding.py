"""Sharded selection (SPEC §10): `select --shard i/n` writes candidates, `select --candidates` merges them.
Against the single-process selection on random data: equal where the method is exact (random, typiclust,
hn-density, and every strategy with one shard), within the stated bound where it is not (k-center: the
merged covering radius, on clustered data sorted by cluster as well as uniform; ProbCover: the coverage)."""

import numpy as np
import pytest
import torch

from alsel import strategies
from alsel.candidates import save_candidates
from alsel.errors import AlselError
from alsel.head import Head
from alsel.selection import read_selection
from alsel.store import open_store, write_store
from alsel.strategies import Inputs
from conftest import MODEL, random_paired, stored, unit, write_paired
from reference import unit64

CPU = torch.device("cpu")
EXACT = ["random", "typiclust", "hn-density", "hn", "hn-fill-closest", "schedule"]


def world(tmp_path, rng, n_pool=120, d=8, clustered=False, repeat_paired=2):
    images, texts, ti = random_paired(rng, n_images=10, d=d)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    if clustered:  # tight, far-apart clusters, the pool sorted by cluster: contiguous shards see few of them
        centers = unit(rng.standard_normal((12, d)))
        label = np.sort(rng.integers(0, 12, n_pool))
        rows = unit(centers[label] + 0.05 * rng.standard_normal((n_pool, d)))
    else:
        rows = unit(rng.standard_normal((n_pool, d)))
    ids = [f"u{i}" for i in range(n_pool)]
    for r in range(repeat_paired):
        rows[r], ids[r] = images[r], f"pimg{r}"
    pool = str(tmp_path / "u.h5")
    write_store(pool, images=rows, image_ids=ids, model=MODEL, pretrained="test", created_by="test")
    return paired, pool


def single_and_merged(tmp_path, name, paired, pool, budget, n, head=None, **kw):
    with open_store(paired, need="paired") as p, open_store(pool) as u:
        one = strategies.select(name, Inputs(pool=u, paired=p, budget=budget, seed=4, head=head, device=CPU), **kw)
        paths = []
        for i in range(n):
            data, attrs = strategies.select_shard(name, Inputs(pool=u, paired=p, budget=budget, seed=4, head=head,
                                                               device=CPU, shard=(i, n)), **kw)
            paths.append(str(tmp_path / f"c_{name}_{n}_{i}.h5"))
            save_candidates(paths[-1], data, attrs)
    return one, strategies.merge_shards(paths[::-1])  # any order of the files


@pytest.mark.parametrize("name", ["random", "coreset", "typiclust", "probcover", "hn-density", "hn",
                                  "hn-learnability", "schedule"])
@pytest.mark.parametrize("with_head", [False, True])
def test_one_shard_is_the_single_process_selection(tmp_path, name, with_head):
    rng = np.random.default_rng(1)
    paired, pool = world(tmp_path, rng)
    head = None
    if with_head or name == "hn-learnability":
        head = Head(8, 8)
        head.reset("random", torch.Generator().manual_seed(2))
    one, merged = single_and_merged(tmp_path, name, paired, pool, 15, 1, head=head)
    assert list(merged.rows) == list(one.rows) and list(merged.ids) == list(one.ids)
    assert np.allclose(np.nan_to_num(merged.score), np.nan_to_num(one.score), rtol=1e-5)
    assert merged.attrs["strategy"] == one.attrs["strategy"] and merged.attrs["paired_left_out"] == 2


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("clustered", [False, True])
def test_exact_strategies_merge_to_the_single_process_selection(tmp_path, name, n, clustered):
    rng = np.random.default_rng(n)
    paired, pool = world(tmp_path, rng, clustered=clustered)
    one, merged = single_and_merged(tmp_path, name, paired, pool, 20, n)
    assert list(merged.rows) == list(one.rows)
    assert merged.attrs["fill_count"] == one.attrs["fill_count"] and merged.attrs["shards"] == n


@pytest.mark.parametrize("name", ["hn", "hn-density", "schedule"])
@pytest.mark.parametrize("fill", ["random", "closest", "row"])
def test_fills_merge_to_the_single_process_selection(tmp_path, name, fill):
    """A budget past the positive scores: the fill's order must be the whole pool's in every shard (for
    --fill closest a shard knows only its own rows' /closest)."""
    paired, pool = world(tmp_path, np.random.default_rng(3), clustered=True)
    mixed = {"delta": 1.2} if name == "schedule" else {}  # most of the batch hard, some of it typical
    one, merged = single_and_merged(tmp_path, name, paired, pool, 100, 3, fill=fill, **mixed)
    assert one.attrs["fill_count"] > 0 and merged.attrs["fill_count"] == one.attrs["fill_count"]
    assert list(merged.rows) == list(one.rows)


@pytest.mark.parametrize("delta", [0.8, 1.2, 2.0])
def test_schedule_merge_splits_the_batch_as_one_process(tmp_path, delta):
    """The whole pool's coverage c from the shards' counts, (1 - c)·B typical items, then c·B hard ones among
    the rest: the same split, rows, scores and parts as one process."""
    paired, pool = world(tmp_path, np.random.default_rng(2), clustered=True)
    one, merged = single_and_merged(tmp_path, "schedule", paired, pool, 40, 3, delta=delta)
    assert 0 < one.attrs["hard_items"] <= 40
    for key in ("coverage", "coverage_delta", "hard_items"):
        assert merged.attrs[key] == one.attrs[key], key
    assert list(merged.rows) == list(one.rows)
    assert np.array_equal(merged.parts["hard"], one.parts["hard"])
    assert np.allclose(merged.score, one.score, rtol=1e-6)
    if one.attrs["hard_items"] < 40:
        assert merged.attrs["clusters_used"] == one.attrs["clusters_used"]


def covering_radius(pool, centers):
    """max over pool items of the distance to the nearest center (float64)."""
    P, C = unit64(pool), unit64(centers)
    return float(np.sqrt(np.maximum(((P[:, None, :] - C[None, :, :]) ** 2).sum(-1), 0)).min(axis=1).max())


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("n", [2, 4])
def test_kcenter_merge_keeps_the_covering_radius_bound(tmp_path, clustered, n):
    rng = np.random.default_rng(10 + n)
    paired, pool = world(tmp_path, rng, n_pool=200, clustered=clustered, repeat_paired=0)
    one, merged = single_and_merged(tmp_path, "coreset", paired, pool, 12, n)
    U, P = stored(pool, "images"), stored(paired, "images")
    r_one = covering_radius(U, np.concatenate([P, U[one.rows]]))
    r_merged = covering_radius(U, np.concatenate([P, U[merged.rows]]))
    bound = float(merged.attrs["radius_bound"])
    assert r_merged <= bound + 1e-5  # the a-posteriori bound r_union + max r_i, from the files
    assert r_merged <= 4 * r_one + 1e-5  # the composable core-set guarantee (Malkomes et al.)
    # the merged greedy's pick distances are non-increasing, as a greedy's are
    assert np.all(np.diff(merged.score) <= 1e-6)


@pytest.mark.parametrize("clustered", [False, True])
def test_probcover_merge_covers_nearly_as_much(tmp_path, clustered):
    rng = np.random.default_rng(21)
    paired, pool = world(tmp_path, rng, n_pool=200, clustered=clustered, repeat_paired=0)
    one, merged = single_and_merged(tmp_path, "probcover", paired, pool, 10, 4, delta=0.35)
    U, P = stored(pool, "images"), stored(paired, "images")
    pts = unit64(np.concatenate([P, U]))

    def covered(rows):
        centers = np.concatenate([unit64(P), pts[len(P) + np.asarray(rows)]])
        d = np.sqrt(np.maximum(((pts[:, None, :] - centers[None, :, :]) ** 2).sum(-1), 0)).min(axis=1)
        return int((d <= 0.35).sum())

    assert covered(merged.rows) >= (1 - 1 / np.e) / 2 * covered(one.rows)  # the stated bound
    assert covered(merged.rows) >= 0.9 * covered(one.rows)  # and what it is on this data


def test_shards_through_the_command_line(tmp_path, run_cli):
    rng = np.random.default_rng(5)
    paired, pool = world(tmp_path, rng, n_pool=90)
    base = ["--paired", paired, "--unpaired", pool, "--budget", 9, "--device", "cpu"]
    for i in range(3):
        code, out, err = run_cli("select", "--strategy", "coreset", *base, "--shard", f"{i}/3", "--out",
                                 tmp_path / f"c{i}.h5")
        assert code == 0, err
        assert f"shard {i}/3" in out
    code, out, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "c1.h5", tmp_path / "c2.h5",
                             "--out", tmp_path / "sel.h5", "--csv", tmp_path / "sel.csv")
    assert code == 0, err
    assert "merged 3 shards of coreset" in err and "2 pool items are already paired" in err
    assert len(read_selection(str(tmp_path / "sel.h5")).rows) == 9
    # every shard is needed, once, from one run; a budget the shards did not use is refused
    code, _, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "c2.h5", "--out", tmp_path / "x.h5")
    assert code == 2 and "shards 1/3 are missing" in err
    code, _, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "c1.h5", tmp_path / "c2.h5",
                           "--fallback", "random", "--out", tmp_path / "x.h5")
    assert code == 2 and "leave out --fallback" in err and not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "c0.h5", tmp_path / "c1.h5",
                           tmp_path / "c2.h5", "--out", tmp_path / "x.h5")
    assert code == 2 and "given twice" in err
    code, _, err = run_cli("select", "--strategy", "random", *base, "--shard", "1/3", "--out", tmp_path / "r1.h5")
    assert code == 0, err
    code, _, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "r1.h5", tmp_path / "c2.h5",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "differs from" in err
    code, _, err = run_cli("select", "--candidates", tmp_path / "c0.h5", tmp_path / "c1.h5", tmp_path / "c2.h5",
                           "--budget", 8, "--out", tmp_path / "x.h5")
    assert code == 2 and "--budget 9" in err and not (tmp_path / "x.h5").exists()
    # what a shard cannot do, one line each
    for extra, msg in ((["--csv", tmp_path / "x.csv"], "--candidates"),
                       (["--strategy", "auto"], "--advice"), (["--strategy", "ascmr"], "no sharded form"),
                       (["--strategy", "coreset", "--fallback", "random"], "--fallback goes with --strategy auto"),
                       (["--strategy", "coreset", "--advice", tmp_path / "adv.json"], "--advice goes with --strategy auto")):
        code, _, err = run_cli("select", *base, "--shard", "0/3", "--out", tmp_path / "x.h5", *extra)
        assert code == 2 and msg in err and err.count("\n") == 1, (extra, err)
