"""alsel embed with a tiny randomly initialised open_clip model (tests/tiny-clip.json): offline."""

import csv
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from alsel.embed import ModelSpec, list_images, load_model
from alsel.store import open_store
from test_cli import assert_bad_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny-clip.json")


def make_images(folder, n, rng, broken=()):
    from PIL import Image

    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    names = []
    for i in range(n):
        name = f"sub/im{i:04d}.png" if i % 3 == 0 else f"im{i:04d}.png"
        Image.fromarray((rng.random((30 + i % 7, 40, 3)) * 255).astype("uint8")).save(os.path.join(folder, name))
        names.append(name)
    for b in broken:
        with open(os.path.join(folder, b), "wb") as fh:
            fh.write(b"\x89PNG but not really")
        names.append(b)
    return sorted(names, key=lambda x: x)


def write_captions(path, rows, header=("id", "text", "image")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    make_images(tmp_path / "imgs", 9, rng, broken=("zz_broken.png",))
    rows = [(f"c{i}_{c}", f"a photo number {i}, take {c}", f"sub/im{i:04d}.png" if i % 3 == 0 else f"im{i:04d}.png")
            for i in range(9) for c in range(2)]
    rows += [("orphan1", "a caption of a broken image", "zz_broken.png"), ("orphan2", "no such image", "gone.png")]
    write_captions(tmp_path / "caps.csv", rows)
    return tmp_path


def embed_args(d, out, *extra):
    return ["embed", "--images", d / "imgs", "--captions", d / "caps.csv", "--model-config", TINY, "--out", out,
            "--device", "cpu", "--batch-size", "4", *extra]


def test_paired_store_shapes_ids_pairing(data, run_cli):
    code, out, err = run_cli(*embed_args(data, data / "p.h5"))
    assert code == 0, err
    assert "1 images could not be read" in err and "2 captions name an image" in err
    with open_store(data / "p.h5", need="paired") as st:
        assert st.images.n == 9 and st.texts.n == 18 and st.d == 32
        assert st.images.dtype == np.float16 and st.texts.dtype == np.float16
        assert st.model == "tiny-clip" and st.attrs["pretrained"].startswith("none")
        ids = list(st.ids("images"))
        assert ids == sorted(ids) and "sub/im0000.png" in ids and "zz_broken.png" not in ids
        for j, tid in enumerate(st.ids("texts")):
            i = int(tid[1:].split("_")[0])
            assert ids[st.text_image[j]] == (f"sub/im{i:04d}.png" if i % 3 == 0 else f"im{i:04d}.png")
        for emb in (st.images, st.texts):
            norms = np.linalg.norm(emb.raw(0, emb.n).astype(np.float64), axis=1)
            assert np.all(np.abs(norms - 1) < 1e-2)
        assert [x.decode() for x in st.file["images/failed"][:]] == ["zz_broken.png"]
        assert sorted(x.decode() for x in st.file["texts/dropped"][:]) == ["orphan1", "orphan2"]
        assert st.file["texts/text"][0].decode() == "a photo number 0, take 0"
    assert not os.path.exists(str(data / "p.h5") + ".partial")


def test_embeddings_equal_the_model_called_directly(data, run_cli):
    from PIL import Image

    assert run_cli(*embed_args(data, data / "p.h5", "--dtype", "float32", "--seed", "3"))[0] == 0
    model, preprocess, tokenizer = load_model(ModelSpec(name="tiny-clip", pretrained=None, config=TINY, seed=3),
                                              torch.device("cpu"))
    with open_store(data / "p.h5", need="paired") as st:
        ids = list(st.ids("images"))
        stored_img = st.images.raw(0, st.images.n)
        stored_txt = st.texts.raw(0, st.texts.n)
        texts = [x.decode() for x in st.file["texts/text"][:]]
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(data / "imgs" / i).convert("RGB")) for i in ids])
        ref_img = torch.nn.functional.normalize(model.encode_image(x), dim=1).numpy()
        ref_txt = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=1).numpy()
    assert np.allclose(stored_img, ref_img, atol=1e-5) and np.allclose(stored_txt, ref_txt, atol=1e-5)


def test_deterministic_for_a_seed(data, run_cli):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run_cli(*embed_args(data, data / f"{name}.h5", "--seed", seed))[0] == 0
    with h5py.File(data / "a.h5") as a, h5py.File(data / "b.h5") as b, h5py.File(data / "c.h5") as c:
        for k in ("images/emb", "texts/emb"):
            assert np.array_equal(a[k][:], b[k][:])
            assert not np.array_equal(a[k][:], c[k][:])


def test_pools_and_list_inputs(data, run_cli, tmp_path):
    assert run_cli("embed", "--images", data / "imgs", "--model-config", TINY, "--out", tmp_path / "ip.h5")[0] == 0
    with open_store(tmp_path / "ip.h5", need="images") as st:
        assert st.texts is None and st.images.n == 9
    write_captions(tmp_path / "unpaired.csv", [("a", "one"), ("b", "two")], header=("id", "text"))
    assert run_cli("embed", "--captions", tmp_path / "unpaired.csv", "--model-config", TINY, "--out",
                   tmp_path / "tp.h5")[0] == 0
    with open_store(tmp_path / "tp.h5", need="texts") as st:
        assert st.images is None and list(st.text_image) == [-1, -1]
    (tmp_path / "jl.jsonl").write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    assert run_cli("embed", "--captions", tmp_path / "jl.jsonl", "--model-config", TINY, "--out",
                   tmp_path / "tp2.h5")[0] == 0
    with h5py.File(tmp_path / "tp.h5") as a, h5py.File(tmp_path / "tp2.h5") as b:
        assert np.array_equal(a["texts/emb"][:], b["texts/emb"][:])
    names = sorted(n for n in os.listdir(data / "imgs") if n.endswith(".png") and n != "zz_broken.png")
    (tmp_path / "list.txt").write_text("".join(f"{data / 'imgs' / n}\n" for n in names))
    lst = list_images(str(tmp_path / "list.txt"))
    assert len(lst.paths) == len(names)
    with open(tmp_path / "t.csv", "w") as fh:
        fh.write("id,image_path\n" + "".join(f"k{i},{data / 'imgs' / n}\n" for i, n in enumerate(names)))
    assert list_images(str(tmp_path / "t.csv")).ids[:2] == ["k0", "k1"]


def test_bad_inputs(data, run_cli, tmp_path):
    out = tmp_path / "o.h5"
    assert_bad_input(run_cli("embed", "--images", tmp_path / "nope", "--model-config", TINY, "--out", out),
                     "nope", "no such file or folder", out=out)
    (tmp_path / "empty").mkdir()
    assert_bad_input(run_cli("embed", "--images", tmp_path / "empty", "--model-config", TINY, "--out", out),
                     "empty", "no images found", out=out)
    write_captions(tmp_path / "nocol.csv", [("a", "b")], header=("key", "caption"))
    assert_bad_input(run_cli("embed", "--captions", tmp_path / "nocol.csv", "--model-config", TINY, "--out", out),
                     "nocol.csv", "needs columns id and text", out=out)
    write_captions(tmp_path / "plain.csv", [("a", "one")], header=("id", "text"))
    assert_bad_input(run_cli("embed", "--captions", tmp_path / "plain.csv", "--model", "NoSuchNet-9", "--pretrained",
                             "none", "--out", out), "NoSuchNet-9", "unknown open_clip model", out=out)
    torch.save({"not": torch.zeros(2)}, tmp_path / "wrong.pt")
    assert_bad_input(run_cli("embed", "--captions", tmp_path / "plain.csv", "--model-config", TINY, "--pretrained",
                             tmp_path / "wrong.pt", "--out", out), "wrong.pt", "cannot load weights", out=out)
    assert_bad_input(run_cli("embed", "--captions", data / "caps.csv", "--model-config", TINY, "--out", out),
                     "no --images", out=out)
    assert not os.path.exists(str(out) + ".partial")


def _run_embed_subprocess(args):
    code = "import sys, cli; sys.exit(cli.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_stopped_run_resumes_to_the_same_file(tmp_path):
    """SIGTERM midway (as SLURM preempts), then --resume: the store equals an uninterrupted run's."""
    rng = np.random.default_rng(1)
    make_images(tmp_path / "imgs", 240, rng, broken=("bad1.png",))
    rows = [(f"c{i}", f"caption {i}", f"sub/im{i:04d}.png" if i % 3 == 0 else f"im{i:04d}.png") for i in range(240)]
    write_captions(tmp_path / "caps.csv", rows)
    args = ["embed", "--images", tmp_path / "imgs", "--captions", tmp_path / "caps.csv", "--model-config", TINY,
            "--device", "cpu", "--batch-size", "2"]
    whole = _run_embed_subprocess(args + ["--out", tmp_path / "whole.h5"])
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    out = tmp_path / "resumed.h5"
    partial = str(out) + ".partial"
    proc = _run_embed_subprocess(args + ["--out", out])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:  # the writer holds the file: read its progress counter without locking, retry on a torn read
            with h5py.File(partial, "r", locking=False) as f:
                if int(f["images/progress"][0]) >= 40:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not os.path.exists(out) and os.path.exists(partial)
    with h5py.File(partial) as f:
        done = int(f["images/progress"][0])
    assert 40 <= done < 241
    res = _run_embed_subprocess(args + ["--out", out, "--resume"])
    assert res.wait(timeout=300) == 0, res.stderr.read()
    assert not os.path.exists(partial)
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(out) as b:
        names = []
        a.visit(names.append)
        for n in names:
            if isinstance(a[n], h5py.Dataset):
                assert np.array_equal(a[n][:], b[n][:]), n
        assert {k: v for k, v in a.attrs.items() if k != "created_by"} == \
            {k: v for k, v in b.attrs.items() if k != "created_by"}


def test_resume_refuses_other_settings(data, run_cli, tmp_path):
    from alsel.embed import Partial

    settings = {"model": "x", "batch_size": 4}
    Partial(str(tmp_path / "o.h5.partial"), settings, 32, np.dtype("float16"), resume=False).close()
    out = tmp_path / "o.h5"
    assert_bad_input(run_cli(*embed_args(data, out, "--resume")), "o.h5.partial", "cannot resume", out=out)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_inference_is_close_to_fp32(data, run_cli, precision):
    assert run_cli(*embed_args(data, data / "a.h5"))[0] == 0
    assert run_cli(*embed_args(data, data / "b.h5", "--precision", precision))[0] == 0
    with h5py.File(data / "a.h5") as a, h5py.File(data / "b.h5") as b:
        for k in ("images/emb", "texts/emb"):
            cos = (a[k][:].astype(np.float64) * b[k][:].astype(np.float64)).sum(axis=1)
            assert cos.min() > 0.999


def test_local_checkpoint(data, run_cli, tmp_path):
    """--pretrained PATH loads a local file (how clusters without network run the real models)."""
    model, _, _ = load_model(ModelSpec(name="tiny-clip", pretrained=None, config=TINY, seed=11), torch.device("cpu"))
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    assert run_cli(*embed_args(data, tmp_path / "ckpt.h5", "--pretrained", tmp_path / "tiny.pt", "--seed", "0"))[0] == 0
    assert run_cli(*embed_args(data, tmp_path / "seed.h5", "--seed", "11"))[0] == 0
    with h5py.File(tmp_path / "ckpt.h5") as a, h5py.File(tmp_path / "seed.h5") as b:
        assert np.array_equal(a["images/emb"][:], b["images/emb"][:])
        assert a.attrs["pretrained"] == str(tmp_path / "tiny.pt")
