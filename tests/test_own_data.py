"""The newcomer path: a folder of photos with captions for some -> embed --pool-out -> select with a path
column and a Label Studio file -> captions back with merge --captions; examples/own_data.sh end to end;
import of per-caption exports. Tiny random open_clip model (tests/tiny-clip.json), offline."""

import csv
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from alsel.store import open_store
from test_cli import assert_bad_input
from test_embed import TINY, make_images, write_captions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def photos(tmp_path):
    """12 photos (4 in sub/), captions for 5 of them (two each), one broken file."""
    rng = np.random.default_rng(3)
    names = make_images(tmp_path / "photos", 12, rng, broken=("zz_broken.png",))
    captioned = [n for n in names if n != "zz_broken.png"][:5]
    rows = [(f"{n}#{c}", f"photo {n} caption {c}", n) for n in captioned for c in range(2)]
    write_captions(tmp_path / "captions.csv", rows)
    return tmp_path, captioned


def embed_split(d, run_cli, *extra):
    return run_cli("embed", "--images", d / "photos", "--captions", d / "captions.csv", "--model-config", TINY,
                   "--device", "cpu", "--out", d / "paired.h5", "--pool-out", d / "pool.h5", *extra)


def test_pool_out_splits_one_folder(photos, run_cli):
    d, captioned = photos
    code, out, err = embed_split(d, run_cli)
    assert code == 0, err
    assert "(image pool): 7 images without a caption" in out
    with open_store(d / "paired.h5", need="paired") as p, open_store(d / "pool.h5", need="images") as u:
        assert sorted(p.ids("images")) == sorted(captioned) and p.texts.n == 10
        assert not set(p.ids("images")) & set(u.ids("images")) and u.images.n == 7 and u.texts is None
        for st in (p, u):
            assert st.attrs["image_root"] == os.path.abspath(d / "photos")
            assert st.attrs["model"] == "tiny-clip" and st.attrs["model_config"] == os.path.abspath(TINY)
        # the same rows as embedding the folder whole
        code, _, err = run_cli("embed", "--images", d / "photos", "--model-config", TINY, "--device", "cpu",
                               "--out", d / "all.h5")
        assert code == 0, err
        with open_store(d / "all.h5") as a:
            row = {x: r for r, x in enumerate(a.ids("images"))}
            for st in (p, u):
                rows = [row[x] for x in st.ids("images")]
                assert np.array_equal(st.images.raw(0, st.images.n), a.images.raw(0, a.images.n)[rows])
        for i, x in zip(p.text_image, p.ids("texts")):
            assert p.ids("images")[i] == x.split("#")[0]


def test_pool_out_refuses_what_cannot_split(photos, run_cli):
    d, captioned = photos
    write_captions(d / "nocol.csv", [("a", "a caption")], header=("id", "text"))
    base = ["embed", "--images", d / "photos", "--model-config", TINY, "--device", "cpu", "--out", d / "p.h5"]
    assert_bad_input(run_cli(*base, "--captions", d / "nocol.csv", "--pool-out", d / "u.h5"), "--pool-out",
                     "image", out=d / "p.h5")
    assert_bad_input(run_cli(*base, "--captions", d / "captions.csv", "--pool-out", d / "p.h5"), "--pool-out",
                     "differ", out=d / "p.h5")
    every = [(f"c{n}", "x", n) for n in os.listdir(d / "photos") if n.endswith(".png")] + \
            [(f"c{n}", "x", f"sub/{n}") for n in os.listdir(d / "photos" / "sub")]
    write_captions(d / "every.csv", every)
    assert_bad_input(run_cli(*base, "--captions", d / "every.csv", "--pool-out", d / "u.h5"), "every one",
                     out=d / "p.h5")
    assert not (d / "u.h5").exists()


def test_select_names_files_and_writes_label_studio_tasks(photos, run_cli):
    d, _ = photos
    assert embed_split(d, run_cli)[0] == 0
    code, out, err = run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 3,
                             "--out", d / "sel.h5", "--csv", d / "sel.csv", "--labelstudio", d / "tasks.json")
    assert code == 0, err
    with open(d / "sel.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and list(rows[0]) == ["rank", "id", "row", "score", "path"]
    for r in rows:
        assert r["path"] == os.path.join(os.path.abspath(d / "photos"), r["id"]) and os.path.isfile(r["path"])
        assert len(r["score"].replace(".", "").lstrip("0")) <= 7  # 6 significant digits
    tasks = json.loads((d / "tasks.json").read_text())
    assert [t["data"]["id"] for t in tasks] == [r["id"] for r in rows]
    # Label Studio's local-files URLs, relative to the folder above the photos (its default document root)
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=photos/" + r["id"] for r in rows]
    assert [t["data"]["rank"] for t in tasks] == [1, 2, 3]
    code, _, err = run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 3,
                           "--out", d / "sel3.h5", "--labelstudio", d / "tasks3.json", "--document-root", d.parent)
    assert code == 0, err
    tasks3 = json.loads((d / "tasks3.json").read_text())
    assert [t["data"]["image"] for t in tasks3] == [f"/data/local-files/?d={d.name}/photos/{r['id']}" for r in rows]
    assert_bad_input(run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 3,
                             "--out", d / "sel4.h5", "--labelstudio", d / "tasks4.json", "--document-root",
                             d / "photos"), "document root", "folder above", out=d / "sel4.h5")
    assert_bad_input(run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 3,
                             "--out", d / "sel4.h5", "--labelstudio", d / "tasks4.json", "--document-root",
                             d / "elsewhere"), "is not under the Label Studio document root", out=d / "sel4.h5")
    assert not (d / "tasks4.json").exists()
    code, _, err = run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", 3,
                           "--out", d / "sel2.h5", "--labelstudio", d / "tasks2.json",
                           "--image-url-prefix", "/data/local-files/?d=photos/")
    assert code == 0, err
    tasks2 = json.loads((d / "tasks2.json").read_text())
    assert [t["data"]["image"] for t in tasks2] == [f"/data/local-files/?d=photos/{r['id']}" for r in rows]


def test_labelstudio_needs_a_root_or_a_prefix(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=200, dim=8, seed=0)
    assert_bad_input(run_cli("select", "--strategy", "random", "--unpaired", w["pool_images"], "--budget", 3,
                             "--out", tmp_path / "s.h5", "--labelstudio", tmp_path / "t.json"),
                     "--image-url-prefix", out=tmp_path / "s.h5")
    assert not (tmp_path / "t.json").exists()


def _selected(d, run_cli, budget=3):
    assert embed_split(d, run_cli)[0] == 0
    code, _, err = run_cli("select", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--budget", budget,
                           "--out", d / "sel.h5", "--labelstudio", d / "tasks.json")
    assert code == 0, err
    return [t["data"]["id"] for t in json.loads((d / "tasks.json").read_text())]


def merge_args(d, new, tag):
    return ["merge", "--paired", d / "paired.h5", "--unpaired", d / "pool.h5", "--selection", d / "sel.h5",
            "--captions", new, "--out-paired", d / f"p_{tag}.h5", "--out-pool", d / f"u_{tag}.h5", "--device", "cpu"]


def test_merge_captions_embeds_only_the_captions(photos, run_cli):
    d, _ = photos
    ids = _selected(d, run_cli)
    write_captions(d / "new.csv", [(i, f"new caption of {i}") for i in ids] + [(ids[0], "a second one")],
                   header=("id", "text"))
    code, out, err = run_cli(*merge_args(d, d / "new.csv", "csv"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["new_images"] == 3 and summary["new_texts"] == 4 and summary["captions_embedded"] == 4
    # the same captions embedded by embed: the same rows; the images are the pool's rows, not re-embedded
    write_captions(d / "plain.csv", [(f"{i}#0", f"new caption of {i}") for i in ids], header=("id", "text"))
    assert run_cli("embed", "--captions", d / "plain.csv", "--model-config", TINY, "--device", "cpu",
                   "--out", d / "plain.h5")[0] == 0
    with open_store(d / "p_csv.h5", need="paired") as p, open_store(d / "pool.h5") as u, \
            open_store(d / "plain.h5") as e:
        new_img = list(p.ids("images"))[-3:]
        assert new_img == ids
        pool_row = {x: r for r, x in enumerate(u.ids("images"))}
        assert np.array_equal(p.images.raw(p.images.n - 3, p.images.n),
                              u.images.raw(0, u.images.n)[[pool_row[i] for i in ids]])
        txt = list(p.ids("texts"))
        assert txt[-4:] == [f"{ids[0]}#0", f"{ids[1]}#0", f"{ids[2]}#0", f"{ids[0]}#1"] or \
            sorted(txt[-4:]) == sorted([f"{i}#0" for i in ids] + [f"{ids[0]}#1"])
        at = {x: r for r, x in enumerate(txt)}
        for r, x in enumerate(e.ids("texts")):
            assert np.array_equal(p.texts.raw(at[x], at[x] + 1)[0], e.texts.raw(r, r + 1)[0])
    with open_store(d / "u_csv.h5", need="images") as u2:
        assert u2.images.n == 4 and not set(ids) & set(u2.ids("images"))


def test_merge_captions_from_jsonl_and_a_label_studio_export(photos, run_cli):
    d, _ = photos
    ids = _selected(d, run_cli)
    with open(d / "new.jsonl", "w") as fh:
        for i in ids:
            fh.write(json.dumps({"id": i, "text": f"new caption of {i}"}) + "\n")
    assert run_cli(*merge_args(d, d / "new.jsonl", "jsonl"))[0] == 0
    tasks = json.loads((d / "tasks.json").read_text())
    export = []
    for n, t in enumerate(tasks):
        export.append({"id": n + 1, "data": t["data"], "annotations": [
            {"id": 10 + n, "was_cancelled": False, "result": [
                {"from_name": "caption", "to_name": "image", "type": "textarea",
                 "value": {"text": [f"new caption of {t['data']['id']}"]}}]},
            {"id": 90 + n, "was_cancelled": True, "result": [
                {"type": "textarea", "value": {"text": ["a cancelled draft"]}}]}]})
    (d / "export.json").write_text(json.dumps(export))
    code, out, err = run_cli(*merge_args(d, d / "export.json", "ls"))
    assert code == 0, err
    with h5py.File(d / "p_jsonl.h5") as a, h5py.File(d / "p_ls.h5") as b:
        for name in ("images/emb", "images/id", "texts/emb", "texts/id", "texts/image"):
            assert np.array_equal(a[name][:], b[name][:]), name


def test_merge_captions_errors(photos, run_cli):
    d, _ = photos
    ids = _selected(d, run_cli)
    write_captions(d / "short.csv", [(i, "c") for i in ids[:2]], header=("id", "text"))
    assert_bad_input(run_cli(*merge_args(d, d / "short.csv", "a"), "--skipped", "error"), "short.csv", repr(ids[2]),
                     "no caption", out=d / "p_a.h5")
    write_captions(d / "extra.csv", [(i, "c") for i in ids] + [("not-selected.png", "c")], header=("id", "text"))
    assert_bad_input(run_cli(*merge_args(d, d / "extra.csv", "b")), "extra.csv", "--ignore-extra", out=d / "p_b.h5")
    assert run_cli(*merge_args(d, d / "extra.csv", "b"), "--ignore-extra")[0] == 0
    # a wrong id (the file name without its subfolder) and the selected photo it meant: reported together
    sub = next((i for i in ids if "/" in i), None)
    if sub is not None:
        write_captions(d / "base.csv", [(i if i != sub else i.split("/")[-1], "c") for i in ids], header=("id", "text"))
        assert_bad_input(run_cli(*merge_args(d, d / "base.csv", "f")), "base.csv", repr(sub.split("/")[-1]),
                         f"did you mean {sub!r}", "1 selected images have no caption", "--ignore-extra",
                         out=d / "p_f.h5")
    write_captions(d / "nocol.csv", [(i,) for i in ids], header=("id",))
    assert_bad_input(run_cli(*merge_args(d, d / "nocol.csv", "c")), "nocol.csv", "text", out=d / "p_c.h5")
    (d / "bad.json").write_text('{"not": "a list"}')
    assert_bad_input(run_cli(*merge_args(d, d / "bad.json", "d")), "bad.json", "Label Studio", out=d / "p_d.h5")
    assert_bad_input(run_cli(*merge_args(d, d / "short.csv", "e"), "--annotations", d / "paired.h5"),
                     "one of the two", out=d / "p_e.h5")
    for f in ("p_a.h5", "u_a.h5", "p_c.h5", "p_d.h5"):
        assert not (d / f).exists()


def test_merge_captions_needs_the_model_for_imported_stores(tmp_path, run_cli):
    from alsel.synth import synth_stores

    w = synth_stores(str(tmp_path / "w"), images=200, dim=8, seed=0)
    assert run_cli("select", "--strategy", "random", "--unpaired", w["pool_images"], "--budget", 2,
                   "--out", tmp_path / "s.h5")[0] == 0
    with h5py.File(tmp_path / "s.h5") as f:
        ids = [x.decode() for x in f["id"][:]]
    write_captions(tmp_path / "new.csv", [(i, "c") for i in ids], header=("id", "text"))
    assert_bad_input(run_cli("merge", "--paired", w["paired"], "--unpaired", w["pool_images"], "--selection",
                             tmp_path / "s.h5", "--captions", tmp_path / "new.csv", "--out-paired", tmp_path / "p.h5",
                             "--out-pool", tmp_path / "u.h5"), "--model", out=tmp_path / "p.h5")


def test_own_data_script_end_to_end(photos):
    """examples/own_data.sh as the README gives it: start, caption (here: a script), next, and again."""
    d, captioned = photos
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
               ALSEL_EMBED=f"--model-config {TINY} --device cpu")
    script = os.path.join(ROOT, "examples", "own_data.sh")

    def run(*args):
        r = subprocess.run(["bash", script, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr
        return r

    run("start", d / "photos", d / "captions.csv", d / "work", 2)
    seen = set(captioned)
    for r in (1, 2):
        with open(d / "work" / f"round{r}" / "to_caption.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 2 and all(os.path.isfile(x["path"]) for x in rows)
        assert not seen & {x["id"] for x in rows}  # never a photo that already has captions
        seen |= {x["id"] for x in rows}
        write_captions(d / f"new{r}.csv", [(x["id"], f"caption of {x['id']}") for x in rows], header=("id", "text"))
        run("next", d / "work", d / f"new{r}.csv")
    with open_store(d / "work" / "round3" / "paired.h5", need="paired") as p:
        assert p.images.n == 5 + 4 and set(p.ids("images")) == seen
    with open_store(d / "work" / "round3" / "pool.h5", need="images") as u:
        assert u.images.n == 12 - 5 - 4 and not seen & set(u.ids("images"))
    with open(d / "work" / "round3" / "to_caption.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def _per_caption_export(tmp_path, n_images=20, per=5, d=16):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((n_images, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img[np.repeat(np.arange(n_images), per)] + 0.3 * rng.standard_normal((n_images * per, d)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    np.save(tmp_path / "img.npy", np.repeat(img, per, axis=0))
    np.save(tmp_path / "txt.npy", txt)
    np.save(tmp_path / "img_once.npy", img)
    np.save(tmp_path / "ti.npy", np.repeat(np.arange(n_images), per))
    return img


def test_import_of_a_per_caption_export_stops_or_groups(tmp_path, run_cli):
    _per_caption_export(tmp_path)
    base = ["import", "--images", tmp_path / "img.npy", "--texts", tmp_path / "txt.npy", "--aligned"]
    assert_bad_input(run_cli(*base, "--out", tmp_path / "naive.h5"), "img.npy", "100 image rows hold only 20",
                     "--group-images", out=tmp_path / "naive.h5")
    code, _, err = run_cli(*base, "--group-images", "--out", tmp_path / "grouped.h5")
    assert code == 0 and "100 image rows were 20 distinct images" in err, err
    assert run_cli("import", "--images", tmp_path / "img_once.npy", "--texts", tmp_path / "txt.npy", "--text-image",
                   tmp_path / "ti.npy", "--out", tmp_path / "proper.h5")[0] == 0
    with h5py.File(tmp_path / "grouped.h5") as g, h5py.File(tmp_path / "proper.h5") as p:
        assert np.array_equal(g["images/emb"][:], p["images/emb"][:])
        assert np.array_equal(g["texts/image"][:], p["texts/image"][:])
        assert [x.decode() for x in g["images/id"][:]] == [f"img:{5 * i}" for i in range(20)]
    r = {}
    for name in ("grouped", "proper"):
        code, out, _ = run_cli("eval", "--test", tmp_path / f"{name}.h5", "--json", "--device", "cpu")
        r[name] = json.loads(out)["rsum"]
    assert r["grouped"] == r["proper"]
    assert_bad_input(run_cli("import", "--images", tmp_path / "img.npy", "--group-images", "--out", tmp_path / "x.h5"),
                     "--aligned", out=tmp_path / "x.h5")
