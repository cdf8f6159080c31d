import numpy as np
import pytest

from alsel.errors import AlselError
from alsel.merge import merge
from alsel import strategies
from alsel.selection import read_selection, save_selection
from alsel.simulate import Oracle
from alsel.store import open_store
from alsel.synth import synth_stores
from test_cli import assert_bad_input


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("mworld")
    return synth_stores(str(d / "w"), images=300, captions=3, classes=10, dim=16, seed=4)


def select(world, tmp_path, side, budget, seed=0):
    pool = world["pool_images" if side == "images" else "pool_texts"]
    with open_store(pool, need=side) as st:
        sel = strategies.select("random", strategies.Inputs(pool=st, budget=budget, seed=seed), select=side)
    path = str(tmp_path / f"sel_{side}.h5")
    save_selection(path, sel)
    return path, sel


def select_rows(pool, side, rows, path):
    """A selection of given pool rows (as a strategy would write it)."""
    from alsel.selection import Selection
    from alsel.store import pool_fingerprint

    with open_store(pool, need=side) as st:
        rows = np.asarray(rows, dtype=np.int64)
        sel = Selection(rows, st.ids(side)[rows], np.zeros(len(rows), np.float32),
                        {"strategy": "test", "budget": len(rows), "seed": 0, "select": side,
                         "pool_fingerprint": pool_fingerprint(st.side(side), st.model)})
    save_selection(str(path), sel)
    return str(path), sel


def contents(path):
    with open_store(path) as st:
        out = {}
        for g in ("images", "texts"):
            emb = getattr(st, g)
            if emb is not None:
                out[g] = dict(zip(st.ids(g), emb.raw(0, emb.n)))
        if st.images is not None and st.texts is not None:
            img_ids = st.ids("images")
            out["pairs"] = {t: img_ids[i] for t, i in zip(st.ids("texts"), st.text_image) if i >= 0}
        return out


def test_merge_selected_images(world, tmp_path):
    sel_path, sel = select(world, tmp_path, "images", 12)
    ann = str(tmp_path / "ann.h5")
    Oracle(world["oracle"]).annotations(ann, "images", sel.ids)
    counts = merge(world["paired"], world["pool_images"], sel_path, ann, str(tmp_path / "p2.h5"),
                   str(tmp_path / "u2.h5"))
    old_p, pool, new_p, rest, oracle = (contents(x) for x in (world["paired"], world["pool_images"],
                                                              tmp_path / "p2.h5", tmp_path / "u2.h5", world["oracle"]))
    assert counts["new_images"] == 12 and counts["new_texts"] == 36 and counts["pool"] == len(pool["images"]) - 12
    # nothing lost or duplicated, embeddings unchanged
    assert set(new_p["images"]) == set(old_p["images"]) | set(sel.ids)
    assert set(rest["images"]) == set(pool["images"]) - set(sel.ids)
    assert len(new_p["images"]) + len(rest["images"]) == len(old_p["images"]) + len(pool["images"])
    for i, v in new_p["images"].items():
        assert np.array_equal(v, (old_p["images"] if i in old_p["images"] else pool["images"])[i])
    # the new captions are the oracle's, pointing at the right images
    for t, i in new_p["pairs"].items():
        assert i == (old_p["pairs"].get(t) or oracle["pairs"][t])
    assert len(new_p["pairs"]) == len(old_p["pairs"]) + 36
    with open_store(tmp_path / "p2.h5", need="paired") as st:
        assert list(st.ids("images")[-12:]) == list(sel.ids)  # new pairs in selection order


def test_merge_selected_texts_reuses_images(world, tmp_path):
    rows = [r for r in range(30) if r % 3 != 2]  # two of the three captions of the first 10 pool images
    sel_path, sel = select_rows(world["pool_texts"], "texts", rows, tmp_path / "sel_t.h5")
    ann = str(tmp_path / "ann.h5")
    Oracle(world["oracle"]).annotations(ann, "texts", sel.ids)
    counts = merge(world["paired"], world["pool_texts"], sel_path, ann, str(tmp_path / "p2.h5"),
                   str(tmp_path / "u2.h5"))
    oracle = contents(world["oracle"])
    assert len({oracle["pairs"][t] for t in sel.ids}) == 10
    assert counts["new_images"] == 10 and counts["new_texts"] == 20  # an image shared by captions comes once
    new_p = contents(tmp_path / "p2.h5")
    for t in sel.ids:
        assert new_p["pairs"][t] == oracle["pairs"][t]
    # round two: the third captions of those images (remaining pool rows 0..9) must reuse the paired
    # images; rows 10..14 are captions of two images not paired yet
    sel2_path, sel2 = select_rows(str(tmp_path / "u2.h5"), "texts", np.arange(15), tmp_path / "sel_t2.h5")
    Oracle(world["oracle"]).annotations(str(tmp_path / "ann2.h5"), "texts", sel2.ids)
    c2 = merge(str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"), sel2_path, str(tmp_path / "ann2.h5"),
               str(tmp_path / "p3.h5"), str(tmp_path / "u3.h5"))
    assert sum(oracle["pairs"][t] in new_p["images"] for t in sel2.ids) == 10
    assert c2["new_texts"] == 15 and c2["new_images"] == 2
    final = contents(tmp_path / "p3.h5")
    assert all(final["pairs"][t] == oracle["pairs"][t] for t in list(sel.ids) + list(sel2.ids))


def test_merge_errors(world, tmp_path, run_cli):
    sel_path, sel = select(world, tmp_path, "images", 5)
    oracle = Oracle(world["oracle"])
    ann_some = str(tmp_path / "some.h5")
    oracle.annotations(ann_some, "images", sel.ids[:4])
    args = ["merge", "--paired", world["paired"], "--unpaired", world["pool_images"], "--selection", sel_path,
            "--out-paired", tmp_path / "p2.h5", "--out-pool", tmp_path / "u2.h5"]
    out = tmp_path / "p2.h5"
    assert_bad_input(run_cli(*args, "--annotations", ann_some, "--skipped", "error"), "some.h5",
                     "1 of 5 selected images have no caption", repr(sel.ids[4]), "--skipped error", out=out)
    assert not (tmp_path / "u2.h5").exists()
    assert_bad_input(run_cli(*args, "--annotations", ann_some, "--skipped", "later"), "--skipped", out=out)
    assert_bad_input(run_cli(*args, "--annotations", world["oracle"]), "oracle.h5", "not selected",
                     "--ignore-extra", out=out)
    code, _, err = run_cli(*args, "--annotations", world["oracle"], "--ignore-extra")
    assert code == 0, err
    # ... and that equals merging exactly the annotations of the selection
    ann = str(tmp_path / "exact.h5")
    oracle.annotations(ann, "images", sel.ids)
    merge(world["paired"], world["pool_images"], sel_path, ann, str(tmp_path / "p3.h5"), str(tmp_path / "u3.h5"))
    a, b = contents(tmp_path / "p2.h5"), contents(tmp_path / "p3.h5")
    assert a["pairs"] == b["pairs"] and a["images"].keys() == b["images"].keys()
    # a selection from another pool
    other = synth_stores(str(tmp_path / "o"), images=300, captions=3, classes=10, dim=16, seed=4, paired=0.2)
    out = tmp_path / "p4.h5"
    assert_bad_input(run_cli("merge", "--paired", world["paired"], "--unpaired", other["pool_images"], "--selection",
                             sel_path, "--annotations", ann, "--out-paired", out, "--out-pool", tmp_path / "u4.h5"),
                     "another pool", out=out)
    # new items whose ids are already paired
    with pytest.raises(AlselError, match="already in"):
        merge(str(tmp_path / "p3.h5"), world["pool_images"], sel_path, ann, str(tmp_path / "p5.h5"),
              str(tmp_path / "u5.h5"))


@pytest.mark.parametrize("side", ["images", "texts"])
def test_merge_carries_labels(tmp_path, side):
    """A labelled world stays labelled: each moved item keeps its own labels, by id."""
    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=6, dim=16, seed=1, multi_label=True)
    pool = w["pool_images" if side == "images" else "pool_texts"]
    sel_path, sel = select({"pool_images": w["pool_images"], "pool_texts": w["pool_texts"]}, tmp_path, side, 9)
    ann = str(tmp_path / "ann.h5")
    Oracle(w["oracle"]).annotations(ann, side, sel.ids)
    merge(w["paired"], pool, sel_path, ann, str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"))

    def labels_by_id(path):
        with open_store(path) as st:
            return {g: dict(zip(st.ids(g), map(tuple, st.labels(g)))) for g in ("images", "texts")
                    if getattr(st, g) is not None}

    truth = labels_by_id(w["oracle"])
    for g, got in labels_by_id(w["paired"]).items():
        truth[g].update(got)
    for path in (tmp_path / "p2.h5", tmp_path / "u2.h5"):
        for g, got in labels_by_id(path).items():
            for i, lab in got.items():
                assert lab == truth[g][i], (path, g, i)
    with open_store(tmp_path / "p2.h5", need="paired") as st:
        assert len(st.labels("texts")) == st.texts.n


def test_merge_label_annotations_of_pool_pairs(tmp_path, run_cli):
    """ASCMR rounds by hand: select on a pool of pairs, annotators return labels, merge moves the chosen
    images with their pool captions and the labels into the paired store; the rest of the pool keeps
    its captions."""
    from alsel.store import write_store

    w = synth_stores(str(tmp_path / "w"), images=200, captions=2, classes=5, dim=16, seed=4, multi_label=True)
    with open_store(w["oracle"]) as o:  # the pool of pairs, without labels
        images, texts, ti = o.images.read(), o.texts.read(), o.text_image.copy()
        img_ids, txt_ids = o.ids("images"), o.ids("texts")
        img_labels, txt_labels = o.labels("images"), o.labels("texts")
    write_store(str(tmp_path / "pool.h5"), images=images, image_ids=img_ids, texts=texts, text_ids=txt_ids,
                text_image=ti, model=o.model, pretrained="synthetic")
    code, _, err = run_cli("select", "--strategy", "random", "--unpaired", tmp_path / "pool.h5", "--budget", "6",
                           "--seed", "3", "--out", tmp_path / "sel.h5")
    assert code == 0, err
    rows = read_selection(str(tmp_path / "sel.h5")).rows
    write_store(str(tmp_path / "ann.h5"), images=images[rows], image_ids=img_ids[rows],
                image_labels=img_labels[rows], model=o.model, pretrained="synthetic")
    out = ["--out-paired", tmp_path / "p2.h5", "--out-pool", tmp_path / "u2.h5"]
    base = ["merge", "--paired", w["paired"], "--unpaired", tmp_path / "pool.h5", "--selection", tmp_path / "sel.h5"]
    code, _, err = run_cli(*base, "--annotations", tmp_path / "ann.h5", *out)
    assert code == 0, err
    with open_store(w["paired"]) as p, open_store(str(tmp_path / "p2.h5")) as p2, \
            open_store(str(tmp_path / "u2.h5")) as u2:
        assert list(p2.ids("images")) == list(p.ids("images")) + list(img_ids[rows])
        assert np.array_equal(p2.labels("images")[p.images.n:], img_labels[rows])
        new_caps = [j for r in rows for j in np.flatnonzero(ti == r)]  # selection order, then caption row
        assert list(p2.ids("texts")[p.texts.n:]) == list(txt_ids[new_caps])
        assert np.array_equal(p2.labels("texts")[p.texts.n:], img_labels[ti[new_caps]])
        assert np.array_equal(p2.text_image[p.texts.n:], p.images.n + np.repeat(np.arange(6), 2))
        keep = np.setdiff1d(np.arange(len(images)), rows)
        assert list(u2.ids("images")) == list(img_ids[keep])
        kept_caps = np.flatnonzero(~np.isin(ti, rows))
        assert list(u2.ids("texts")) == list(txt_ids[kept_caps])
        assert list(u2.ids("images")[u2.text_image]) == list(img_ids[ti[kept_caps]])  # captions follow
        assert u2.labels("images") is None
    # annotations of captions' own labels are used where given
    write_store(str(tmp_path / "ann2.h5"), images=images[rows], image_ids=img_ids[rows],
                image_labels=img_labels[rows], texts=texts[new_caps], text_ids=txt_ids[new_caps],
                text_image=np.repeat(np.arange(6), 2), text_labels=1 - txt_labels[new_caps], model=o.model,
                pretrained="synthetic")
    assert run_cli(*base, "--annotations", tmp_path / "ann2.h5", "--out-paired", tmp_path / "p3.h5", "--out-pool",
                   tmp_path / "u3.h5")[0] == 0
    with open_store(str(tmp_path / "p3.h5")) as p3:
        assert np.array_equal(p3.labels("texts")[-12:], 1 - txt_labels[new_caps])
    # a missing annotation, labels of unselected images, an unlabelled paired store: one line each
    write_store(str(tmp_path / "few.h5"), images=images[rows[:3]], image_ids=img_ids[rows[:3]],
                image_labels=img_labels[rows[:3]], model=o.model, pretrained="synthetic")
    assert_bad_input(run_cli(*base, "--annotations", tmp_path / "few.h5", *out[:1], tmp_path / "x.h5", out[2],
                             tmp_path / "y.h5"), "has no annotation", out=tmp_path / "x.h5")
    extra = np.concatenate([rows, [r for r in range(len(images)) if r not in rows][:1]])
    write_store(str(tmp_path / "more.h5"), images=images[extra], image_ids=img_ids[extra],
                image_labels=img_labels[extra], model=o.model, pretrained="synthetic")
    assert_bad_input(run_cli(*base, "--annotations", tmp_path / "more.h5", *out[:1], tmp_path / "x.h5", out[2],
                             tmp_path / "y.h5"), "--ignore-extra", out=tmp_path / "x.h5")
    plain = synth_stores(str(tmp_path / "plain"), images=100, captions=2, classes=5, dim=16, seed=4)
    assert_bad_input(run_cli("merge", "--paired", plain["paired"], "--unpaired", tmp_path / "pool.h5", "--selection",
                             tmp_path / "sel.h5", "--annotations", tmp_path / "ann.h5", "--out-paired",
                             tmp_path / "x.h5", "--out-pool", tmp_path / "y.h5"), "no /images/labels")
