import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alsel.errors import AlselError
from alsel.ingest import import_arrays, import_clip_retrieval
from alsel.store import open_store
from conftest import unit


def test_import_aligned_pairs(tmp_path):
    rng = np.random.default_rng(0)
    img, txt = unit(rng.standard_normal((6, 4))), unit(rng.standard_normal((6, 4)))
    np.save(tmp_path / "img.npy", img)
    np.save(tmp_path / "txt.npy", txt.astype(np.float16))
    out = str(tmp_path / "s.h5")
    import_arrays(out, images=str(tmp_path / "img.npy"), texts=str(tmp_path / "txt.npy"), aligned=True, model="m")
    with open_store(out, need="paired") as st:
        assert list(st.text_image) == list(range(6)) and st.model == "m"
        assert st.images.dtype == np.float32 and st.texts.dtype == np.float16
        assert list(st.ids("images")[:2]) == ["img:0", "img:1"]
        assert np.allclose(st.images.read(), img, atol=1e-6)


def test_import_text_index_ids_and_normalize(tmp_path):
    rng = np.random.default_rng(1)
    img, txt = rng.standard_normal((3, 4)) * 5, rng.standard_normal((7, 4))
    np.save(tmp_path / "i.npy", img)
    np.save(tmp_path / "t.npy", txt)
    np.save(tmp_path / "ti.npy", np.array([0, 0, 1, 2, 2, 2, -1]))
    (tmp_path / "ids.txt").write_text("a\nb\nc\n")
    out = str(tmp_path / "s.h5")
    with pytest.raises(AlselError, match="not unit length"):
        import_arrays(out, images=str(tmp_path / "i.npy"), texts=str(tmp_path / "t.npy"),
                      text_image=str(tmp_path / "ti.npy"))
    assert not os.path.exists(out)
    import_arrays(out, images=str(tmp_path / "i.npy"), texts=str(tmp_path / "t.npy"),
                  text_image=str(tmp_path / "ti.npy"), image_ids=str(tmp_path / "ids.txt"), normalize=True,
                  dtype="float16")
    with open_store(out) as st:
        assert list(st.ids("images")) == ["a", "b", "c"] and list(st.text_image) == [0, 0, 1, 2, 2, 2, -1]
        assert not st.is_paired and st.texts.dtype == np.float16
    np.save(tmp_path / "bad.npy", np.array([0, 5, 1, 2, 2, 2, 0]))
    with pytest.raises(AlselError, match="out of range"):
        import_arrays(str(tmp_path / "s2.h5"), images=str(tmp_path / "i.npy"), texts=str(tmp_path / "t.npy"),
                      text_image=str(tmp_path / "bad.npy"), normalize=True)


def _clip_retrieval_folder(root, shards, with_meta=True, texts=True):
    rng = np.random.default_rng(0)
    for d in ("img_emb", "text_emb", "metadata"):
        os.makedirs(root / d, exist_ok=True)
    k = 0
    for s, n in enumerate(shards):
        np.save(root / "img_emb" / f"img_emb_{s}.npy", unit(rng.standard_normal((n, 8))).astype(np.float16))
        if texts:
            np.save(root / "text_emb" / f"text_emb_{s}.npy", unit(rng.standard_normal((n, 8))).astype(np.float16))
        if with_meta:
            table = pa.table({"image_path": [f"/data/im{k + r}.jpg" for r in range(n)],
                              "caption": [f"a photo {k + r}" for r in range(n)]})
            pq.write_table(table, root / "metadata" / f"metadata_{s}.parquet")
        k += n


def test_import_clip_retrieval_folder(tmp_path):
    root = tmp_path / "cr"
    _clip_retrieval_folder(root, [5, 3, 4])
    out = str(tmp_path / "s.h5")
    import_clip_retrieval(out, str(root), model="ViT-B-32")
    with open_store(out, need="paired") as st:
        assert st.images.n == 12 and st.images.dtype == np.float16
        assert list(st.ids("images")[[0, 5, 11]]) == ["/data/im0.jpg", "/data/im5.jpg", "/data/im11.jpg"]
        assert st.ids("texts")[5] == "/data/im5.jpg#caption"
        assert st.file["texts/text"][5].decode() == "a photo 5"
        shard1 = np.load(root / "img_emb" / "img_emb_1.npy")
        assert np.array_equal(st.images.raw(5, 8), shard1)


def test_import_clip_retrieval_images_only_without_metadata(tmp_path):
    root = tmp_path / "cr"
    _clip_retrieval_folder(root, [4, 2], with_meta=False, texts=False)
    out = str(tmp_path / "s.h5")
    import_clip_retrieval(out, str(root))
    with open_store(out, need="images") as st:
        assert st.texts is None and list(st.ids("images")[[0, 4]]) == ["cr:0:0", "cr:1:0"]
    with pytest.raises(AlselError, match="no img_emb"):
        import_clip_retrieval(out, str(tmp_path))


def test_import_labels(tmp_path, run_cli):
    rng = np.random.default_rng(0)
    img = unit(rng.standard_normal((6, 4)))
    np.save(tmp_path / "img.npy", img)
    labels = (rng.random((6, 3)) < 0.5).astype(np.int64)
    np.save(tmp_path / "lab.npy", labels)
    np.save(tmp_path / "bad.npy", labels * 2)
    np.save(tmp_path / "short.npy", labels[:5])
    out = str(tmp_path / "s.h5")
    import_arrays(out, images=str(tmp_path / "img.npy"), image_labels=str(tmp_path / "lab.npy"))
    with open_store(out, need="images") as st:
        assert np.array_equal(st.labels("images"), labels) and st.labels("images").dtype == np.uint8
    for bad, needle in (("bad.npy", "multi-hot"), ("short.npy", "shape")):
        code, _, err = run_cli("import", "--images", tmp_path / "img.npy", "--image-labels", tmp_path / bad,
                               "--out", tmp_path / "x.h5")
        assert code == 2 and err.count("\n") == 1 and bad in err and needle in err, err
        assert not (tmp_path / "x.h5").exists()
    code, _, err = run_cli("import", "--images", tmp_path / "img.npy", "--text-labels", tmp_path / "lab.npy",
                           "--out", tmp_path / "x.h5")
    assert code == 2 and "--text-labels given without the texts" in err
