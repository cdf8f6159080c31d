"""The Python API on arrays (alsel.arrays): the same answers as the commands on the same rows in files,
and as the float64 references; numpy and torch inputs alike."""

import numpy as np
import pytest
import torch

import alsel
from alsel.errors import AlselError
from conftest import random_paired, unit, write_paired, write_pool
from reference import ref_c, ref_xi

ALL = ("random", "coreset", "hn", "hn-density", "typiclust", "probcover")


@pytest.fixture
def world():
    rng = np.random.default_rng(5)
    images, texts, ti = random_paired(rng, n_images=30, max_captions=3, d=16)
    pool = unit(rng.standard_normal((120, 16)))
    return images, texts, ti, pool


@pytest.mark.parametrize("select", ["images", "texts"])
@pytest.mark.parametrize("form", ["loss", "rank", "margin"])
def test_xi_matches_the_reference(world, select, form):
    images, texts, ti, _ = world
    xi = alsel.xi(images, torch.from_numpy(texts), ti, select=select, form=form, top_k=2, device="cpu")
    assert xi.dtype == np.float32 and xi.shape == (len(texts),)
    assert np.allclose(xi, ref_xi(images, texts, ti, select=select, top_k=2, form=form), atol=1e-5)


@pytest.mark.parametrize("select", ["images", "texts"])
def test_hard_negative_scores_match_the_reference(world, select):
    images, texts, ti, pool = world
    s = alsel.hard_negative_scores(images, texts, pool, ti, select=select, weight="surplus", device="cpu")
    c = ref_c(pool, images, texts, ti, ref_xi(images, texts, ti, select=select), select)
    assert np.array_equal(s.count, (c > 0).sum(1))
    assert np.allclose(s.score, np.maximum(c, 0).sum(1), atol=1e-5)
    assert np.allclose(s.closest, c.max(1), atol=1e-5)


@pytest.mark.parametrize("strategy", ALL)
def test_select_on_arrays_equals_the_command_on_files(world, strategy, tmp_path, run_cli):
    images, texts, ti, pool = world
    sel = alsel.select(strategy, pool, 7, paired_images=images, paired_texts=texts, text_image=ti, seed=3,
                       device="cpu", pool_ids=[f"u{i}" for i in range(len(pool))])
    p = write_paired(tmp_path / "p.h5", images, texts, ti)
    u = write_pool(tmp_path / "u.h5", pool)
    code, _, err = run_cli("select", "--strategy", strategy, "--paired", p, "--unpaired", u, "--budget", 7,
                           "--seed", 3, "--device", "cpu", "--out", tmp_path / "sel.h5")
    assert code == 0, err
    from alsel.selection import read_selection

    ref = read_selection(str(tmp_path / "sel.h5"))
    assert np.array_equal(sel.rows, ref.rows) and list(sel.ids) == list(ref.ids)
    assert np.allclose(sel.score, ref.score, equal_nan=True)


def test_select_texts_and_options_as_keywords(world):
    images, texts, ti, _ = world
    rng = np.random.default_rng(1)
    pool_texts = unit(rng.standard_normal((50, 16)))
    a = alsel.select("hn-top2-counting", pool_texts, 5, paired_images=images, paired_texts=texts, text_image=ti,
                     select="texts", device="cpu")
    b = alsel.select("hn", pool_texts, 5, paired_images=images, paired_texts=texts, text_image=ti,
                     select="texts", top_k=2, weight="counting", device="cpu")
    assert np.array_equal(a.rows, b.rows) and a.attrs["strategy"] == b.attrs["strategy"]


def test_recall_equals_eval(world, tmp_path, run_cli):
    import json

    images, texts, ti, _ = world
    p = write_paired(tmp_path / "t.h5", images, texts, ti)
    code, out, _ = run_cli("eval", "--test", p, "--json", "--device", "cpu")
    got = alsel.recall(torch.from_numpy(images), texts, ti, device="cpu")
    assert code == 0 and got["rsum"] == pytest.approx(json.loads(out)["rsum"], abs=0.01)


def test_bad_arrays_are_one_line_errors(world):
    images, texts, ti, pool = world
    with pytest.raises(AlselError, match="unit rows"):
        alsel.xi(images[:, 0], texts, ti)
    with pytest.raises(AlselError, match="unit length"):
        alsel.xi(images * 2, texts, ti)
    with pytest.raises(AlselError, match="text_image"):
        alsel.xi(images, texts)  # 30 images, more texts: the pairing must be given
    with pytest.raises(AlselError, match="needs"):
        alsel.select("coreset", pool, 3, device="cpu")


def test_the_notebook_example_runs():
    """examples/notebook.py, plain Python a notebook would run: arrays in, thresholds, scores, strategies,
    metrics."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "notebook.py")], capture_output=True,
                       text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "ξ: 500 thresholds" in r.stdout and "R-sum" in r.stdout and "typiclust" in r.stdout
