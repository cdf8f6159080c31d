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


def test_label_map_matches_bruteforce_with_ties():
    from alsel.metrics import average_precision, label_map
    from reference import ref_average_precision

    rng = np.random.default_rng(7)
    images = unit(rng.standard_normal((40, 6)))
    texts = unit(np.concatenate([images[:10], rng.standard_normal((50, 6))]))  # exact ties with images
    texts[20:25] = texts[15]  # exact ties among gallery rows
    img_lab = (rng.random((40, 4)) < 0.3).astype(np.uint8)
    txt_lab = (rng.random((60, 4)) < 0.3).astype(np.uint8)
    img_lab[3] = 0  # a query with no relevant item
    ap = average_precision(images, img_lab, texts, txt_lab, torch.device("cpu"), chunk=7)
    ref = ref_average_precision(images, img_lab, texts, txt_lab)
    assert np.array_equal(np.isnan(ap), np.isnan(ref)) and np.isnan(ap[3])
    assert np.allclose(ap[~np.isnan(ap)], ref[~np.isnan(ref)], atol=1e-12)
    m = label_map(images, img_lab, texts, txt_lab, torch.device("cpu"))
    assert m["i2t_map"] == pytest.approx(np.nanmean(ref))
    assert m["t2i_map"] == pytest.approx(np.nanmean(ref_average_precision(texts, txt_lab, images, img_lab)))


def test_eval_labels_cli(tmp_path, run_cli):
    import json

    from alsel import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=5, dim=16, seed=2, multi_label=True)
    code, out, err = run_cli("eval", "--test", w["test"], "--labels", "--json", "--device", "cpu")
    assert code == 0, err
    res = json.loads(out)
    assert 0.2 < res["t2i_map"] <= 1 and 0.2 < res["i2t_map"] <= 1 and "rsum" in res
    plain = synth_stores(str(tmp_path / "p"), images=200, captions=2, classes=5, dim=16, seed=2)
    code, _, err = run_cli("eval", "--test", plain["test"], "--labels")
    assert code == 2 and err.startswith("error: ") and "labels" in err and err.count("\n") == 1
