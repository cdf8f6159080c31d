import itertools

import numpy as np
import pytest
import torch

from alsel.errors import AlselError
from alsel.scoring import parse_shard, save_scores, score_pool, shard_range
from alsel import strategies
from alsel.strategies.scores import load_scores
from alsel.store import load_paired, open_store
from alsel.thresholds import ThresholdParams, make_thresholds
from conftest import random_paired, stored, unit, write_paired, write_pool
from reference import assert_scores_match, ref_c, ref_xi

CPU = torch.device("cpu")
PRECISIONS = [torch.float32, torch.bfloat16, torch.float16]
COMBOS = list(itertools.product(["images", "texts"], [1, 3], ["full", "mini"], ["loss", "rank", "margin"],
                                ["counting", "surplus"]))


@pytest.fixture(scope="module", params=["float32", "float16"])
def files(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    rng = np.random.default_rng(5)
    images, texts, ti = random_paired(rng, n_images=13, max_captions=3, d=8)
    paired = write_paired(d / "p.h5", images, texts, ti, dtype=request.param)
    # pool items near paired items so that many beat their thresholds
    base = np.concatenate([images, texts])
    pool_rows = unit(base[rng.integers(0, len(base), 37)] + 0.5 * rng.standard_normal((37, 8)))
    pool_i = write_pool(d / "ui.h5", pool_rows, "images", request.param)
    pool_t = write_pool(d / "ut.h5", pool_rows[::-1].copy(), "texts", request.param)
    return {"paired": paired, "images": pool_i, "texts": pool_t, "ti": ti, "dir": d}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("select,top_k,batch,form,weight", COMBOS)
def test_streamed_scores_match_bruteforce(files, small_tiles, select, top_k, batch, form, weight, precision):
    """Every variant, chunk sizes that do not divide the pool, 1..3 shards merged from files, in float32
    and on the exact low-precision paths."""
    params = ThresholdParams(select=select, top_k=top_k, batch=batch, batch_size=5, form=form, seed=2)
    ref_x = ref_xi(stored(files["paired"], "images"), stored(files["paired"], "texts"), files["ti"], select, top_k,
                   batch, 5, 0.2, form, 2)
    c = ref_c(stored(files[select], select), stored(files["paired"], "images"), stored(files["paired"], "texts"),
              files["ti"], ref_x, select)
    with open_store(files["paired"], need="paired") as st, open_store(files[select], need=select) as pool:
        paired = load_paired(st)
        th = make_thresholds(paired, params, CPU, chunk_size=4, precision=precision)
        for n_shards, chunk in [(1, 37), (1, 7), (2, 5), (3, 4)]:
            paths = []
            for i in range(n_shards):
                res = score_pool(pool, paired, th, weight, CPU, (i, n_shards), chunk_size=chunk, precision=precision)
                a, b = shard_range(i, n_shards, 37)
                assert list(res.rows) == list(range(a, b))
                paths.append(str(files["dir"] / f"s_{select}_{top_k}_{batch}_{form}_{weight}_{precision}_{i}.h5"))
                save_scores(paths[-1], res)
            merged = load_scores(paths[::-1])  # order of files does not matter
            assert list(merged.rows) == list(range(37))
            assert_scores_match(merged.count, merged.score, c, weight)
            assert np.allclose(merged.closest, c.max(axis=1), atol=1e-5, rtol=0)  # ±inf where ξ = -inf
            sel = strategies.select("hn", strategies.Inputs(pool=None, budget=10, scores=paths), fill="row")
            _, ref_score = (None, merged.score)
            order = np.lexsort((np.arange(37), -ref_score.astype(np.float64)))[:10]
            assert list(sel.rows) == list(order)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scores_against_float64_on_many_texts(tmp_path, precision):
    """Default tiles (1024 x 512), a pool crossing chunk and tile borders, thousands of texts."""
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=400, max_captions=5, d=32)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti, dtype="float16")
    pool_rows = unit(images[rng.integers(0, 400, 2500)] + 0.6 * rng.standard_normal((2500, 32)))
    pool = write_pool(tmp_path / "u.h5", pool_rows, "images", "float16")
    ref_x = ref_xi(stored(paired, "images"), stored(paired, "texts"), ti)
    c = ref_c(stored(pool, "images"), stored(paired, "images"), stored(paired, "texts"), ti, ref_x, "images")
    with open_store(paired, need="paired") as st, open_store(pool, need="images") as u:
        p = load_paired(st)
        th = make_thresholds(p, ThresholdParams(), CPU, precision=precision)
        res = score_pool(u, p, th, "surplus", CPU, chunk_size=1100, precision=precision)
    assert len(texts) > 1000
    assert_scores_match(res.count, res.score, c, "surplus")
    assert np.allclose(res.closest, c.max(axis=1), atol=1e-5, rtol=0)
    assert (res.count > 0).sum() > 100


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(None) == (0, 1)
    for bad in ["4/4", "1", "a/b", "-1/4", "1/0", "1/2/3"]:
        with pytest.raises(AlselError, match="--shard"):
            parse_shard(bad)


def test_shard_ranges_tile_the_pool():
    for n in [1, 2, 3, 7, 50]:
        covered = []
        for i in range(n):
            a, b = shard_range(i, n, 37)
            covered.extend(range(a, b))
        assert covered == list(range(37))


class CountingRows:
    """Wraps Rows and records the largest read, to pin that the pool is streamed."""

    def __init__(self, inner):
        self.inner, self.n, self.d, self.max_read, self.reads = inner, inner.n, inner.d, 0, 0

    def load(self, a, b, out=None):
        self.max_read = max(self.max_read, b - a)
        self.reads += 1
        return self.inner.load(a, b, out)

    def release(self, a, b):
        self.inner.release(a, b)


def test_pool_is_read_in_chunks(files):
    from alsel.scoring import score_rows

    with open_store(files["paired"], need="paired") as st, open_store(files["images"], need="images") as pool:
        p = load_paired(st)
        th = make_thresholds(p, ThresholdParams(), CPU)
        rows = CountingRows(pool.images)
        count, score, _ = score_rows(rows, p, th, "surplus", CPU, chunk_size=6)
        full_count, full_score, _ = score_rows(pool.images, p, th, "surplus", CPU, chunk_size=1000)
    assert rows.max_read == 6 and rows.reads == 7
    assert np.array_equal(count, full_count) and np.allclose(score, full_score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_whole_tile_chunk_sizes_give_identical_bits(tmp_path, precision):
    """Automatic chunk sizes are whole compute tiles, so the result does not depend on free memory."""
    from alsel.stream import CPU_TILE_ROWS, auto_chunk_size

    assert auto_chunk_size(512, CPU) % CPU_TILE_ROWS == 0 and auto_chunk_size(8, CPU) <= 16384
    rng = np.random.default_rng(3)
    images, texts, ti = random_paired(rng, n_images=60, max_captions=5, d=16)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    pool = write_pool(tmp_path / "u.h5", unit(rng.standard_normal((9000, 16))), dtype="float16")
    with open_store(paired, need="paired") as st, open_store(pool, need="images") as u:
        p = load_paired(st)
        th = make_thresholds(p, ThresholdParams(), CPU, precision=precision)
        runs = [score_pool(u, p, th, "surplus", CPU, chunk_size=c, precision=precision) for c in (1024, 4096, None)]
    for r in runs[1:]:
        assert np.array_equal(r.score, runs[0].score) and np.array_equal(r.count, runs[0].count)
