import numpy as np
import pytest
import torch

from alsel.errors import AlselError
from alsel import strategies
from alsel.strategies.kcenter import kcenter_greedy
from alsel.strategies.scores import load_scores, top_b
from alsel.store import open_store
from alsel.h5file import write_h5
from alsel.stream import ArrayRows
from conftest import random_paired, stored, unit, write_paired, write_pool
from reference import ref_coreset

CPU = torch.device("cpu")


def test_top_b_ties_go_to_the_lower_row():
    score = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5], dtype=np.float32)
    assert list(top_b(score, 1)) == [1]
    assert list(top_b(score, 3)) == [1, 3, 2]
    assert list(top_b(score, 4)) == [1, 3, 2, 4]
    assert list(top_b(score, 7)) == [1, 3, 2, 4, 5, 0, 6]


def test_top_b_matches_full_sort_on_random_scores():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        score = rng.integers(0, 5, n).astype(np.float32)  # many ties
        b = int(rng.integers(1, n + 1))
        ref = sorted(range(n), key=lambda i: (-score[i], i))[:b]
        assert list(top_b(score, b)) == ref


def _shard(path, rows, pool_size=10, **over):
    attrs = dict(weight="surplus", select="images", top_k=1, batch="full", batch_size=128, margin=0.2, form="loss",
                 seed=0, pool_size=pool_size, pool_fingerprint="pf", paired_fingerprint="qf",
                 thresholds_fingerprint="tf", shard="0/1")
    attrs.update(over)
    rows = np.asarray(rows, dtype=np.int64)
    write_h5(path, "scores", {"row": rows, "id": np.array([f"u{r}" for r in rows], dtype=object),
                              "count": np.ones(len(rows), np.int64), "score": rows.astype(np.float32)}, attrs)
    return str(path)


def test_merge_refuses_gaps_and_overlaps(tmp_path):
    a = _shard(tmp_path / "a.h5", range(0, 5))
    b = _shard(tmp_path / "b.h5", range(5, 10))
    assert list(load_scores([b, a]).rows) == list(range(10))
    gap = _shard(tmp_path / "g.h5", range(6, 10))
    with pytest.raises(AlselError, match=r"gap: pool rows 5\.\.5"):
        load_scores([a, gap])
    over = _shard(tmp_path / "o.h5", range(4, 10))
    with pytest.raises(AlselError, match="overlap: pool row 4"):
        load_scores([a, over])
    other = _shard(tmp_path / "t.h5", range(5, 10), thresholds_fingerprint="zz")
    with pytest.raises(AlselError, match="thresholds_fingerprint"):
        load_scores([a, other])


def test_random_is_reproducible_and_distinct(tmp_path):
    rng = np.random.default_rng(0)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((50, 4))))
    with open_store(pool, need="images") as st:
        def select_random(budget, seed):
            return strategies.select("random", strategies.Inputs(pool=st, budget=budget, seed=seed))
        s1 = select_random(20, seed=3)
        s2 = select_random(20, seed=3)
        s3 = select_random(20, seed=4)
        with pytest.raises(AlselError, match="larger than the pool"):
            select_random(51, seed=0)
    assert list(s1.rows) == list(s2.rows) and list(s1.rows) != list(s3.rows)
    assert len(set(s1.rows)) == 20
    assert list(s1.ids) == [f"u{r}" for r in s1.rows]


@pytest.mark.parametrize("select", ["images", "texts"])
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("precision", [None, torch.bfloat16, torch.float16])
def test_coreset_matches_bruteforce(tmp_path, small_tiles, select, cache, monkeypatch, precision):
    from alsel.strategies import kcenter

    if not cache:  # the pool re-streamed for every pick
        monkeypatch.setattr(kcenter, "POOL_FRACTION", 0)
    rng = np.random.default_rng(2)
    images, texts, ti = random_paired(rng, n_images=9, d=6)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((41, 6))), select)
    with open_store(paired, need="paired") as p, open_store(pool, need=select) as u:
        sel = strategies.select("coreset", strategies.Inputs(pool=u, paired=p, budget=12, device=CPU, chunk_size=7,
                                                             precision=precision), select=select)
    ref = ref_coreset(stored(pool, select), stored(paired, select), 12)
    assert list(sel.rows) == list(ref)
    assert np.all(np.diff(sel.score) <= 1e-6)  # k-center distances never grow


def test_kcenter_never_repeats():
    rng = np.random.default_rng(0)
    pool = unit(rng.standard_normal((30, 3)))
    rows = kcenter_greedy(ArrayRows(pool), pool[:2], 30, CPU).rows
    assert sorted(rows) == list(range(30))
