import os

import h5py
import numpy as np
import pytest

from alsel.errors import AlselError
from alsel.store import load_paired, open_store, paired_fingerprint, write_store
from alsel.h5file import write_h5
from alsel.output import atomic_path
from conftest import MODEL, random_paired, unit, write_paired, write_pool


def test_roundtrip_and_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng)
    p = write_paired(tmp_path / "p.h5", images, texts, ti, dtype="float16")
    with open_store(p, need="paired") as st:
        assert st.images.memory_mapped and st.texts.memory_mapped
        assert st.images.dtype == np.float16 and st.d == 8
        x = st.images.read(2, 9)
        assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)
        assert np.allclose(x, images[2:9], atol=2e-3)
        assert list(st.ids("texts")[:2]) == ["ptxt0", "ptxt1"]
        assert st.is_paired and list(st.text_image) == list(ti)
        st.images.release(0, st.images.n)  # dropping pages keeps data readable
        assert np.array_equal(st.images.read(2, 9), x)
        with h5py.File(p, "r") as f:
            assert f["images/emb"].chunks is None and f["images/emb"].compression is None
            assert f.attrs["kind"] == "store" and f.attrs["alsel_format"] == 1


def test_chunked_dataset_is_read_in_slices(tmp_path):
    rng = np.random.default_rng(0)
    rows = unit(rng.standard_normal((20, 5)))
    p = write_pool(tmp_path / "u.h5", rows)
    q = str(tmp_path / "c.h5")
    with h5py.File(p, "r") as src, h5py.File(q, "w") as dst:
        for k, v in src.attrs.items():
            dst.attrs[k] = v
        dst.create_dataset("images/emb", data=src["images/emb"][:], chunks=(4, 5), compression="gzip")
        src.copy("images/id", dst["images"])
    with open_store(p) as a, open_store(q) as b:
        assert a.images.memory_mapped and not b.images.memory_mapped
        assert np.array_equal(a.images.read(3, 17), b.images.read(3, 17))


def test_fingerprint_changes_with_content(tmp_path):
    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng)
    a = write_paired(tmp_path / "a.h5", images, texts, ti)
    b = write_paired(tmp_path / "b.h5", images, texts, ti, prefix="q")  # other ids, same embeddings
    texts2 = texts.copy()
    texts2[0] = unit(texts2[:1] + 0.01)[0]
    c = write_paired(tmp_path / "c.h5", images, texts2, ti)
    fp = {}
    for k, path in dict(a=a, b=b, c=c).items():
        with open_store(path, need="paired") as st:
            fp[k] = paired_fingerprint(st)
            assert load_paired(st).fingerprint == fp[k]
    assert fp["a"] == fp["b"] and fp["a"] != fp["c"]


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    out = tmp_path / "x.h5"
    write_h5(out, "selection", {"row": np.arange(3)}, {"strategy": "random"})
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("boom")
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.h5"]


def test_writer_rejects_bad_rows_and_leaves_nothing(tmp_path):
    rows = unit(np.random.default_rng(0).standard_normal((5, 3)))
    bad = rows.copy()
    bad[2] *= 3
    with pytest.raises(AlselError, match="row 2 .* not unit length"):
        write_store(tmp_path / "s.h5", images=bad, image_ids=list("abcde"), model=MODEL, pretrained="t")
    with pytest.raises(AlselError, match="duplicate id 'a'"):
        write_store(tmp_path / "s.h5", images=rows, image_ids=list("abcda"), model=MODEL, pretrained="t")
    assert os.listdir(tmp_path) == []


def test_float16_rounding_is_absorbed(tmp_path):
    rows = unit(np.random.default_rng(0).standard_normal((100, 512))).astype(np.float16)
    p = write_pool(tmp_path / "u.h5", rows, dtype="float16")
    with open_store(p, need="images") as st:
        x = st.images.read()
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-6)


def test_outputs_get_umask_permissions(tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        write_h5(tmp_path / "x.h5", "selection", {"row": np.arange(3)}, {"strategy": "random"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "x.h5").st_mode) == 0o644


def _pool_with_ids(path, ids):
    rows = unit(np.random.default_rng(0).standard_normal((len(ids), 4)))
    write_pool(path, rows)
    with h5py.File(path, "r+") as f:
        del f["images/id"]
        f["images/id"] = np.array([x.encode() for x in ids], dtype=f"S{max(len(x.encode()) for x in ids)}")
    return str(path)


@pytest.mark.parametrize("collide", [False, True])
def test_duplicate_ids_found_in_bounded_memory(tmp_path, monkeypatch, collide):
    """Streamed check across hash chunks; with every hash colliding, the actual ids still decide."""
    from alsel import h5file

    monkeypatch.setattr(h5file, "ID_CHUNK", 7)
    if collide:
        monkeypatch.setattr(h5file, "id_hashes", lambda raw: np.zeros(len(raw), np.uint64))
    ids = [f"u{i}" for i in range(40)]
    with open_store(_pool_with_ids(tmp_path / "ok.h5", ids), need="images") as st:
        assert list(st.ids("images", 5, 9)) == ids[5:9]
        assert list(st.ids_at("images", np.array([30, 2, 30, 17]))) == ["u30", "u2", "u30", "u17"]
        assert list(st.ids("images")) == ids
    ids[33] = "u3"
    with pytest.raises(AlselError, match="duplicate id 'u3' in /images/id \\(rows 3 and 33\\)"):
        open_store(_pool_with_ids(tmp_path / "dup.h5", ids), need="images")


def test_labels_are_checked_multi_hot(tmp_path):
    rows = unit(np.random.default_rng(0).standard_normal((4, 3)))
    good = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    write_store(tmp_path / "ok.h5", images=rows, image_ids=list("abcd"), image_labels=good, model=MODEL,
                pretrained="t")
    with open_store(tmp_path / "ok.h5", need="images") as st:
        assert st.labels("images").dtype == np.uint8 and np.array_equal(st.labels("images"), good)
        assert st.labels("texts") is None
    for bad, needle in ((good * 2, "multi-hot"), (good[:3], "shape")):
        with pytest.raises(AlselError, match=needle):
            write_store(tmp_path / "bad.h5", images=rows, image_ids=list("abcd"), image_labels=bad, model=MODEL,
                        pretrained="t")
        assert not (tmp_path / "bad.h5").exists()
    with h5py.File(tmp_path / "ok.h5", "r+") as f:
        f["images/labels"][0, 0] = 3
    with open_store(tmp_path / "ok.h5", need="images") as st:
        with pytest.raises(AlselError, match="ok.h5: /images/labels must be multi-hot"):
            st.labels("images")


def test_id_bytes_check_each_id_in_one_decode(tmp_path):
    """read_id_bytes gives the ids' UTF-8 bytes and refuses what read_ids refuses, also a multi-byte
    character split across two ids (each half is invalid; joined without a separator they would decode)."""
    import h5py
    import numpy as np
    import pytest

    from alsel.errors import AlselError
    from alsel.h5file import read_id_bytes, read_ids

    path = tmp_path / "ids.h5"
    good = [b"a", "\u00e9t\u00e9".encode(), "\u732b".encode(), b""]
    with h5py.File(path, "w") as f:
        for name, data in (("good", good), ("bad", [b"a", b"\xff\xfe"]), ("split", [b"x\xc3", b"\xa9y"]),
                           ("lead", [b"ok", b"\xa9"])):
            f.create_dataset(name, data=np.array(data, dtype=object), dtype=h5py.string_dtype())
    with h5py.File(path, "r") as f:
        assert list(read_id_bytes(f["good"], str(path))) == good
        assert list(read_id_bytes(f["good"], str(path), 1, 3)) == good[1:3]
        assert [x.decode() for x in read_id_bytes(f["good"], str(path))] == list(read_ids(f["good"], str(path)))
        for name in ("bad", "split", "lead"):
            with pytest.raises(AlselError, match=f"ids.h5: /{name} holds ids that are not valid UTF-8"):
                read_ids(f[name], str(path))
            with pytest.raises(AlselError, match=f"ids.h5: /{name} holds ids that are not valid UTF-8"):
                read_id_bytes(f[name], str(path))

    class AsStr(np.ndarray):  # a reader handing back str: read_ids' checks, then the bytes
        name = "/texts"
    assert list(read_id_bytes(np.array(["a", "\u00e9"], dtype=object).view(AsStr), "x.h5")) == [b"a", "\u00e9".encode()]
    with pytest.raises(AlselError, match="/texts holds ids that are not valid UTF-8"):
        read_id_bytes(np.array(["a", "b\udc80"], dtype=object).view(AsStr), "x.h5")


def test_already_paired_rows_by_bytes_match_the_text(tmp_path, monkeypatch):
    """The pool rows whose id is a paired id, found by comparing UTF-8 bytes in blocks, are those found by
    comparing the decoded text, non-ASCII ids and a shard's row range (across blocks) included."""
    import numpy as np

    from alsel import h5file

    monkeypatch.setattr(h5file, "ID_CHUNK", 7)

    from alsel.store import open_store, write_store
    from alsel.strategies import REGISTRY, Context, Inputs, Options
    from alsel.strategies.base import _leave_out
    from conftest import MODEL, random_paired, unit, write_paired

    rng = np.random.default_rng(0)
    images, texts, ti = random_paired(rng, n_images=6, d=8)
    paired = write_paired(tmp_path / "p.h5", images, texts, ti)
    with open_store(paired, need="paired") as p:
        pids = list(p.ids("images"))
    ids = [f"\u00e9l\u00e8ve-{i}" for i in range(50)]
    for r, k in ((3, 0), (17, 2), (40, 5)):
        ids[r] = pids[k]
    write_store(str(tmp_path / "u.h5"), images=unit(rng.standard_normal((50, 8))), image_ids=ids, model=MODEL,
                pretrained="test", created_by="test")

    def left_out(shard, scores_out=None):
        with open_store(paired, need="paired") as p, open_store(str(tmp_path / "u.h5")) as u:
            inputs = Inputs(pool=u, budget=1, paired=p, shard=shard, scores_out=scores_out)
            ctx = Context(REGISTRY["random"], inputs, Options())
            _leave_out(ctx, inputs, ctx.opts)
            return ctx

    want = np.array([x in set(pids) for x in ids])
    assert list(np.flatnonzero(want)) == [3, 17, 40]
    ctx = left_out(None)
    assert np.array_equal(~ctx.selectable, want) and ctx.left_out == 3 and ctx.pool_ids.ids is None
    ctx = left_out((1, 3), scores_out="s.h5")  # rows 16..33: only row 17 of them; its ids kept for a scores file
    assert ctx.rows == (16, 33) and ctx.left_out == 1 and list(np.flatnonzero(ctx.pool_ids.paired)) == [1]
    assert ctx.pool_ids.ids.tolist() == [x.encode() for x in ids[16:33]]


def test_ids_that_are_not_utf8_are_refused(tmp_path):
    """Ids are read as text: bytes that do not decode, and a str that cannot be encoded (a lone surrogate),
    are refused with the file and dataset named."""
    import h5py
    import numpy as np
    import pytest

    from alsel.errors import AlselError
    from alsel.h5file import read_ids

    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("good", data=np.array([b"a", "\u00e9t\u00e9".encode()], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("bad", data=np.array([b"a", b"\xff\xfe"], dtype=object), dtype=h5py.string_dtype())
    with h5py.File(path, "r") as f:
        assert list(read_ids(f["good"], str(path))) == ["a", "\u00e9t\u00e9"]
        with pytest.raises(AlselError, match="ids.h5: /bad holds ids that are not valid UTF-8"):
            read_ids(f["bad"], str(path))

    class AsStr(np.ndarray):  # a reader handing back str, one of them not encodable
        name = "/texts"
    strs = np.array(["a", "b\udc80"], dtype=object).view(AsStr)
    with pytest.raises(AlselError, match="/texts holds ids that are not valid UTF-8"):
        read_ids(strs, "x.h5")
    assert list(read_ids(np.array(["a", "b"], dtype=object).view(AsStr), "x.h5")) == ["a", "b"]
    mixed = np.array(["a", b"\xff"], dtype=object).view(AsStr)  # str first, then bytes that do not decode
    with pytest.raises(AlselError, match="/texts holds ids that are not valid UTF-8"):
        read_ids(mixed, "x.h5")
    assert list(read_ids(np.array([b"a", "b"], dtype=object).view(AsStr), "x.h5")) == ["a", "b"]


@pytest.mark.parametrize("fixed", [False, True])
def test_scan_ids_equals_a_brute_force_reference(tmp_path, monkeypatch, fixed):
    """One read of the ids in blocks: for random row ranges (across block edges), known sets and kept or not,
    the mask and the kept bytes equal set membership and slicing of the whole list; fixed-length and
    variable-length ids alike; the whole side is checked whatever the range."""
    from alsel import h5file

    monkeypatch.setattr(h5file, "ID_CHUNK", 5)
    rng = np.random.default_rng(1)
    ids = [("\u00e9" * int(rng.integers(0, 3))) + f"x{i}" + "y" * int(rng.integers(0, 4)) for i in range(37)]
    path = tmp_path / "u.h5"
    if fixed:
        _pool_with_ids(path, ids)
    else:
        write_store(str(path), images=unit(rng.standard_normal((37, 4))), image_ids=ids, model=MODEL,
                    pretrained="t")
    raw = [x.encode() for x in ids]
    for trial in range(12):
        start = int(rng.integers(0, 37))
        stop = int(rng.integers(start, 38))
        known = None if trial % 3 == 0 else {raw[k] for k in rng.choice(37, 9, replace=False)} | {b"zz"}
        keep = bool(trial % 2)
        with open_store(str(path)) as st:
            scan = st.scan_ids("images", start, stop, known, keep)
            assert st._checked == {"images"}
        if known is None:
            assert scan.paired is None
        else:
            assert scan.paired.tolist() == [x in known for x in raw[start:stop]]
        assert (scan.ids is None) == (not keep)
        if keep:
            assert scan.ids.tolist() == raw[start:stop] and all(type(x) is bytes for x in scan.ids)
    ids[36] = ids[2]  # a repeat outside the rows asked for is still found
    _pool_with_ids(tmp_path / "dup.h5", ids)
    with open_store(str(tmp_path / "dup.h5")) as st, pytest.raises(AlselError, match="rows 2 and 36"):
        st.scan_ids("images", 0, 3, None, True)
