import itertools

import numpy as np
import pytest
import torch

from alsel.errors import AlselError
from alsel.store import load_paired, open_store
from alsel.thresholds import ThresholdParams, compute_xi, mini_blocks
from conftest import random_paired, stored, write_paired
from reference import ref_xi

COMBOS = list(itertools.product(["images", "texts"], [1, 3], ["full", "mini"], ["loss", "rank", "margin"]))


@pytest.fixture(params=["float32", "float16"])
def paired_file(request, tmp_path):
    rng = np.random.default_rng(1)
    images, texts, ti = random_paired(rng, n_images=13, max_captions=3, d=8)
    return write_paired(tmp_path / "p.h5", images, texts, ti, dtype=request.param)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("select,top_k,batch,form", COMBOS)
def test_xi_matches_bruteforce(paired_file, small_tiles, select, top_k, batch, form, precision):
    params = ThresholdParams(select=select, top_k=top_k, batch=batch, batch_size=5, margin=0.2, form=form, seed=3)
    with open_store(paired_file, need="paired") as st:
        paired = load_paired(st)
        ti = st.text_image.copy()
    xi = compute_xi(paired, params, torch.device("cpu"), chunk_size=4, precision=precision)
    ref = ref_xi(stored(paired_file, "images"), stored(paired_file, "texts"), ti, select, top_k, batch, 5,
                 0.2, form, 3)
    assert xi.dtype == np.float32
    assert np.array_equal(np.isinf(xi), np.isinf(ref))
    fin = np.isfinite(ref)
    assert np.allclose(xi[fin], ref[fin], atol=1e-6)
    if form == "rank" and top_k == 3 and batch == "mini":
        assert np.isinf(ref).any(), "the case of fewer than k negatives is exercised"


def test_mini_blocks_follow_spec():
    blocks = mini_blocks(11, 4, seed=7)
    perm = np.random.default_rng(7).permutation(11)
    assert blocks.shape == (3, 4)
    assert list(blocks.ravel()[:11]) == list(perm) and list(blocks.ravel()[11:]) == [-1]


def test_bad_params():
    with pytest.raises(AlselError, match="--top-k"):
        ThresholdParams(top_k=0)
    with pytest.raises(AlselError, match="--form"):
        ThresholdParams(form="hinge")
    with pytest.raises(AlselError, match="--batch-size"):
        ThresholdParams(batch="mini", batch_size=0)
