"""SPEC §8: no caption string is ever lost, and skipped items stay out.

Every command that writes a store from stores (merge in each mode, simulate's rounds, import) is walked
and the strings checked against the ids they belong to; a selected item without an annotation is kept in
the pool as skipped, and no strategy, score or later round chooses it again."""

import json

import h5py
import numpy as np
import pytest

from alsel.errors import AlselError
from alsel.merge import merge, nearest_id
from alsel.selection import read_selection
from alsel.simulate import Oracle
from alsel.store import open_store, write_store
from alsel.synth import synth_stores
from test_cli import assert_bad_input
from test_merge import select, select_rows


def text_of(i: str) -> str:
    return f"caption «{i}» — with ünïcode"


def add_text(path):
    """Give a store's texts their strings (written as alsel writes them), from their ids."""
    with h5py.File(path, "a") as f:
        if "texts" in f:
            ids = [x.decode() for x in f["texts/id"][:]]
            f["texts"].create_dataset("text", data=np.array([text_of(i) for i in ids], dtype=object),
                                      dtype=h5py.string_dtype("utf-8"))
    return path


def strings(path):
    """{text id: string} of a store (None when it holds no text)."""
    with open_store(path) as st:
        s = st.text_strings()
        return None if s is None else dict(zip(st.ids("texts"), s))


def assert_texts_kept(path):
    got = strings(path)
    assert got is not None, f"{path} lost its text"
    bad = {i: t for i, t in got.items() if t != text_of(i)}
    assert not bad, list(bad.items())[:3]


@pytest.fixture(scope="module")
def texted(tmp_path_factory):
    d = tmp_path_factory.mktemp("texted")
    w = synth_stores(str(d / "w"), images=240, captions=2, classes=8, dim=16, seed=2, multi_label=True)
    for k in ("paired", "pool_texts", "oracle", "test"):
        add_text(w[k])
    return w


def test_merge_images_keeps_old_and_new_text(texted, tmp_path):
    sel_path, sel = select(texted, tmp_path, "images", 7)
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "images", sel.ids)
    assert_texts_kept(ann)  # the oracle's text travels into what annotators return
    merge(texted["paired"], texted["pool_images"], sel_path, ann, str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"))
    assert_texts_kept(tmp_path / "p2.h5")
    assert len(strings(tmp_path / "p2.h5")) == len(strings(texted["paired"])) + 14


def test_merge_texts_keeps_the_pool_strings(texted, tmp_path):
    sel_path, sel = select_rows(texted["pool_texts"], "texts", [0, 3, 5, 8], tmp_path / "sel.h5")
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "texts", sel.ids)
    merge(texted["paired"], texted["pool_texts"], sel_path, ann, str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"))
    assert_texts_kept(tmp_path / "p2.h5")
    assert_texts_kept(tmp_path / "u2.h5")  # the remaining text pool keeps its strings
    assert set(sel.ids) <= set(strings(tmp_path / "p2.h5"))


def test_merge_pool_of_pairs_keeps_the_captions_text(texted, tmp_path):
    with open_store(texted["oracle"]) as o:
        rows = [1, 4, 6]
        write_store(str(tmp_path / "pool.h5"), images=o.images.read(), image_ids=o.ids("images"),
                    texts=o.texts.read(), text_ids=o.ids("texts"), text_image=o.text_image,
                    text_strings=o.text_strings(), model=o.model, pretrained="synthetic")
        write_store(str(tmp_path / "ann.h5"), images=o.images.read()[rows], image_ids=o.ids("images")[rows],
                    image_labels=o.labels("images")[rows], model=o.model, pretrained="synthetic")
    sel_path, _ = select_rows(str(tmp_path / "pool.h5"), "images", rows, tmp_path / "sel.h5")
    merge(texted["paired"], str(tmp_path / "pool.h5"), sel_path, str(tmp_path / "ann.h5"), str(tmp_path / "p2.h5"),
          str(tmp_path / "u2.h5"))
    assert_texts_kept(tmp_path / "p2.h5")
    assert_texts_kept(tmp_path / "u2.h5")


def test_merge_of_stores_without_text_stays_without(tmp_path):
    w = synth_stores(str(tmp_path / "w"), images=150, captions=2, classes=5, dim=16, seed=1)
    sel_path, sel = select(w, tmp_path, "images", 4)
    ann = str(tmp_path / "ann.h5")
    Oracle(w["oracle"]).annotations(ann, "images", sel.ids)
    merge(w["paired"], w["pool_images"], sel_path, ann, str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"))
    assert strings(tmp_path / "p2.h5") is None


def test_texted_paired_store_with_bare_annotations_keeps_its_text(texted, tmp_path):
    """New captions without strings never drop the old ones: they get "" (unknown)."""
    sel_path, sel = select(texted, tmp_path, "images", 3)
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "images", sel.ids)
    with h5py.File(ann, "a") as f:
        del f["texts/text"]
    merge(texted["paired"], texted["pool_images"], sel_path, ann, str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5"))
    got, old = strings(tmp_path / "p2.h5"), strings(texted["paired"])
    assert all(got[i] == t for i, t in old.items())
    assert [t for i, t in got.items() if i not in old] == [""] * 6


def test_simulate_rounds_keep_the_text(texted, tmp_path, run_cli):
    code, _, err = run_cli("simulate", "--oracle", texted["oracle"], "--test", texted["test"], "--budget", 6,
                           "--rounds", 2, "--strategies", "random,coreset-texts", "--initial", 20, "--epochs", 2,
                           "--device", "cpu", "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    stores = sorted((tmp_path / "sim").rglob("*.h5"))
    written = [p for p in stores if p.name in ("paired.h5", "pool.h5", "pool_texts.h5", "annotations.h5")]
    assert len(written) >= 10
    for p in written:
        with open_store(p) as st:
            if st.texts is not None:
                assert_texts_kept(p)


def test_import_texts_text_and_info(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((5, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "txt.npy", img)
    caps = ["a dog", "a cat\non two lines", "ümlaut", "", "x"]
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(c) + "\n" for c in caps))
    code, out, err = run_cli("import", "--images", tmp_path / "img.npy", "--texts", tmp_path / "txt.npy", "--aligned",
                             "--texts-text", tmp_path / "caps.jsonl", "--out", tmp_path / "s.h5")
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as st:
        assert list(st.text_strings()) == caps
    code, out, _ = run_cli("info", tmp_path / "s.h5", "--json")
    assert json.loads(out)["summary"]["text"].startswith("yes")
    (tmp_path / "short.txt").write_text("one\ntwo\n")
    assert_bad_input(run_cli("import", "--images", tmp_path / "img.npy", "--texts", tmp_path / "txt.npy", "--aligned",
                             "--texts-text", tmp_path / "short.txt", "--out", tmp_path / "t.h5"),
                     "short.txt", "2 caption strings for 5 text rows", out=tmp_path / "t.h5")
    code, out, _ = run_cli("import", "--images", tmp_path / "img.npy", "--out", tmp_path / "u.h5")
    assert code == 0
    code, out, _ = run_cli("info", tmp_path / "u.h5", tmp_path / "s.h5", "--json")
    docs = [json.loads(x) for x in out.strip().splitlines()]
    assert [d["path"] for d in docs] == [str(tmp_path / "u.h5"), str(tmp_path / "s.h5")]
    assert "text" not in docs[0]["summary"] and docs[1]["summary"]["text"].startswith("yes")


# --------------------------------------------------------------------------- skipped items


def test_skipped_stay_in_the_pool_and_are_never_selected_again(texted, tmp_path, run_cli):
    sel_path, sel = select(texted, tmp_path, "images", 6)
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "images", sel.ids[:4])  # the last two came back uncaptioned
    p2, u2 = str(tmp_path / "p2.h5"), str(tmp_path / "u2.h5")
    counts = merge(texted["paired"], texted["pool_images"], sel_path, ann, p2, u2)
    assert counts["new_images"] == 4 and counts["skipped"] == 2 and counts["skipped_ids"] == list(sel.ids[4:])
    with open_store(p2) as p, open_store(u2) as u, open_store(texted["pool_images"]) as u0:
        assert not set(sel.ids[4:]) & set(p.ids("images"))
        assert set(u.ids("images")) == set(u0.ids("images")) - set(sel.ids[:4])
        flagged = set(u.ids("images")[u.flags("images", "skipped")])
        assert flagged == set(sel.ids[4:])
        n = u.images.n
    # no strategy chooses them: a budget of every other pool item never includes them, and the note says so
    for strategy in ("random", "coreset", "typiclust", "probcover", "hn", "hn-density"):
        code, _, err = run_cli("select", "--strategy", strategy, "--paired", p2, "--unpaired", u2, "--budget", n - 2,
                               "--out", tmp_path / f"s_{strategy}.h5", "--quiet", "--device", "cpu")
        assert code == 0, (strategy, err)
        chosen = set(read_selection(str(tmp_path / f"s_{strategy}.h5")).ids)
        assert not chosen & set(sel.ids[4:]), strategy
        assert "2 pool items were skipped by annotators" in err
        assert_bad_input(run_cli("select", "--strategy", strategy, "--paired", p2, "--unpaired", u2, "--budget", n - 1,
                                 "--out", tmp_path / "x.h5", "--quiet", "--device", "cpu"),
                         "larger than the pool", "2 more were skipped by annotators", out=tmp_path / "x.h5")
    # score files carry them as /skipped (score 0), and select --scores leaves them out
    code, _, err = run_cli("score", "--paired", p2, "--unpaired", u2, "--out", tmp_path / "sc.h5", "--device", "cpu")
    assert code == 0 and "2 pool items were skipped" in err
    with h5py.File(tmp_path / "sc.h5") as f:
        skipped = f["skipped"][:].astype(bool)
        assert set(x.decode() for x in f["id"][:][skipped]) == set(sel.ids[4:])
        assert (f["score"][:][skipped] == 0).all()
    code, _, err = run_cli("select", "--scores", tmp_path / "sc.h5", "--budget", n - 2, "--out", tmp_path / "ss.h5")
    assert code == 0, err
    assert not set(read_selection(str(tmp_path / "ss.h5")).ids) & set(sel.ids[4:])
    # the next round's merge keeps the flags of the items it does not touch
    sel2_path, sel2 = select_rows(u2, "images", [r for r in range(3)
                                                 if r not in np.flatnonzero(open_store(u2).flags("images", "skipped"))][:2],
                                  tmp_path / "sel2.h5")
    ann2 = str(tmp_path / "ann2.h5")
    Oracle(texted["oracle"]).annotations(ann2, "images", sel2.ids)
    merge(p2, u2, sel2_path, ann2, str(tmp_path / "p3.h5"), str(tmp_path / "u3.h5"))
    with open_store(tmp_path / "u3.h5") as u:
        assert set(u.ids("images")[u.flags("images", "skipped")]) == set(sel.ids[4:])


def test_skipped_error_keeps_the_strict_behaviour(texted, tmp_path):
    sel_path, sel = select(texted, tmp_path, "images", 4)
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "images", sel.ids[:3])
    with pytest.raises(AlselError, match=r"1 of 4 selected images have no caption"):
        merge(texted["paired"], texted["pool_images"], sel_path, ann, str(tmp_path / "p.h5"), str(tmp_path / "u.h5"),
              skipped="error")
    assert not (tmp_path / "p.h5").exists() and not (tmp_path / "u.h5").exists()


def test_skipped_texts(texted, tmp_path):
    sel_path, sel = select_rows(texted["pool_texts"], "texts", [2, 7, 9], tmp_path / "sel.h5")
    ann = str(tmp_path / "ann.h5")
    Oracle(texted["oracle"]).annotations(ann, "texts", sel.ids[:2])
    counts = merge(texted["paired"], texted["pool_texts"], sel_path, ann, str(tmp_path / "p.h5"),
                   str(tmp_path / "u.h5"))
    assert counts["skipped_ids"] == [sel.ids[2]]
    with open_store(tmp_path / "u.h5") as u:
        assert list(u.ids("texts")[u.flags("texts", "skipped")]) == [sel.ids[2]]
    assert_texts_kept(tmp_path / "u.h5")


def test_nearest_id():
    chosen = ["trip/DSC067.jpg", "trip/DSC068.jpg", "home/cat.png"]
    assert nearest_id("DSC067.jpg", chosen) == "trip/DSC067.jpg"
    assert nearest_id("home/cat.jpg", chosen) == "home/cat.png"
    assert nearest_id("zzz", chosen) is None
