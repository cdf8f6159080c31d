import numpy as np
import pytest
import torch

from alsel.metrics import KEYS, recall
from conftest import random_paired, unit
from reference import ref_recall

CPU = torch.device("cpu")


@pytest.mark.parametrize("captions", [1, 5, "varying"])
def test_recall_matches_bruteforce(small_tiles, captions):
    rng = np.random.default_rng(0)
    n = 40
    if captions == "varying":
        images, texts, ti = random_paired(rng, n_images=n, max_captions=4, d=16)
    else:
        images = unit(rng.standard_normal((n, 16)))
        ti = np.repeat(np.arange(n), captions)
        texts = unit(images[ti] + 0.9 * rng.standard_normal((len(ti), 16)))
    got = recall(images, texts, ti, CPU, chunk_size=7)
    ref = ref_recall(images, texts, ti)
    assert list(got) == list(KEYS)
    assert got == pytest.approx(ref, abs=1e-9)
    assert 0 < got["i2t_r1"] < 100 and 0 < got["t2i_r10"] <= 100


def test_ties_count_against_the_query(small_tiles):
    """Embeddings on the axes of R^4 give exactly equal scores: every tie must rank ahead."""
    e = np.eye(4, dtype=np.float32)
    images = e[[0, 0, 1, 2, 3, 1]]  # images 0 and 1 identical, 2 and 5 identical
    ti = np.array([0, 1, 1, 2, 3, 4, 5, 5])
    texts = e[[0, 0, 1, 1, 2, 3, 1, 1]]
    got = recall(images, texts, ti, CPU, chunk_size=2)
    ref = ref_recall(images, texts, ti)
    assert got == pytest.approx(ref, abs=1e-9)
    # t2i by hand: t0, t1 tie with the other axis-0 image (rank 1); t2 (axis 1, image on axis 0) is
    # beaten or tied by all 5 others; t3, t6, t7 tie with the other axis-1 image; only t4 and t5 are
    # alone on their axes: R@1 = 2/8
    assert got["t2i_r1"] == pytest.approx(100 * 2 / 8)
    assert got["t2i_r5"] == pytest.approx(100 * 7 / 8)


def test_images_without_captions_are_gallery_only(small_tiles):
    rng = np.random.default_rng(1)
    images = unit(rng.standard_normal((10, 8)))
    ti = np.array([0, 0, 1, 2, 3, 4, 5])  # images 6..9 have no caption
    texts = unit(images[ti] + 0.5 * rng.standard_normal((7, 8)))
    got = recall(images, texts, ti, CPU)
    assert got == pytest.approx(ref_recall(images, texts, ti), abs=1e-9)


def test_coco500_zero_shot_figures(coco500, run_cli):
    import json

    code, out, err = run_cli("eval", "--test", coco500, "--json")
    assert code == 0, err
    m = json.loads(out)
    assert [round(m[k], 1) for k in ("i2t_r1", "i2t_r5", "i2t_r10")] == [55.2, 80.8, 89.2]
    assert [round(m[k], 1) for k in ("t2i_r1", "t2i_r5", "t2i_r10")] == [50.6, 76.6, 86.2]
    assert m["rsum"] == pytest.approx(438.6) and m["r1sum"] == pytest.approx(105.8)
