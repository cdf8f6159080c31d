import numpy as np

from alsel.store import open_store
from alsel.synth import make_world, synth_stores


def test_world_is_finely_categorized():
    w = make_world(images=600, captions=3, classes=10, fine_per_class=3, dim=32, seed=0)
    s = w.images @ w.images.T
    same_fine = w.fine[:, None] == w.fine[None, :]
    same_coarse = (w.coarse[:, None] == w.coarse[None, :]) & ~same_fine
    other = w.coarse[:, None] != w.coarse[None, :]
    off = ~np.eye(len(s), dtype=bool)
    fine_mean, coarse_mean, other_mean = s[same_fine & off].mean(), s[same_coarse].mean(), s[other].mean()
    assert fine_mean > coarse_mean + 0.1 > other_mean + 0.2
    # raw retrieval is hard but far above chance: a caption's nearest image is its own 10x more often
    # than chance, and from its fine class 3x more often (a trained head has much to gain)
    cap = w.captions.reshape(600, 3, 32)[:, 0]
    nearest = np.argmax(cap @ w.images.T, axis=1)
    assert 10 / 600 < (nearest == np.arange(600)).mean() < 0.5
    assert (w.fine[nearest] == w.fine).mean() > 3 / 30


def test_synth_writes_consistent_stores(tmp_path):
    paths = synth_stores(str(tmp_path / "w"), images=200, captions=4, classes=5, dim=16, seed=1)
    assert set(paths) == {"paired", "pool_images", "pool_texts", "test", "oracle"}
    with open_store(paths["paired"], need="paired") as p, open_store(paths["pool_images"], need="images") as u, \
            open_store(paths["pool_texts"], need="texts") as t, open_store(paths["oracle"], need="paired") as o, \
            open_store(paths["test"], need="paired") as te:
        assert (p.images.n, u.images.n, te.images.n) == (20, 140, 40)
        assert p.texts.n == 80 and t.texts.n == 560 and (t.text_image == -1).all()
        assert list(o.ids("images")) == list(u.ids("images"))
        assert list(o.ids("texts")) == list(t.ids("texts"))
        assert len(set(p.ids("images")) & set(u.ids("images"))) == 0
        assert p.model == u.model == "synthetic-d16-seed1" and p.images.dtype == np.float16
        assert np.array_equal(o.images.read(), u.images.read())


def test_synth_is_reproducible(tmp_path):
    a = synth_stores(str(tmp_path / "a"), images=60, dim=8, seed=3)
    b = synth_stores(str(tmp_path / "b"), images=60, dim=8, seed=3)
    with open_store(a["pool_images"]) as x, open_store(b["pool_images"]) as y:
        assert np.array_equal(x.images.raw(0, x.images.n), y.images.raw(0, y.images.n))


def test_multi_label_world(tmp_path):
    """--labels: every store carries multi-hot labels, captions share their image's, and the world
    without labels is unchanged."""
    from alsel import synth_stores
    from alsel.store import open_store
    from alsel.synth import make_world

    plain, labelled = make_world(300, seed=4), make_world(300, seed=4, multi_label=True)
    assert plain.labels is None and labelled.labels.shape == (300, 50)
    assert np.array_equal(plain.coarse, labelled.coarse)
    assert np.all(labelled.labels[np.arange(300), labelled.coarse] == 1)
    extra = labelled.labels.sum(axis=1) - 1
    assert set(np.unique(extra)) == {0, 1} and 0.2 < extra.mean() < 0.4
    paths = synth_stores(str(tmp_path / "w"), images=300, seed=4, multi_label=True)
    for name, p in paths.items():
        with open_store(p) as st:
            for group in ("images", "texts"):
                if getattr(st, group) is not None:
                    lab = st.labels(group)
                    assert lab.dtype == np.uint8 and lab.shape == (getattr(st, group).n, 50), (name, group)
            if st.images is not None and st.texts is not None:
                assert np.array_equal(st.labels("texts"), st.labels("images")[st.text_image])
    with open_store(synth_stores(str(tmp_path / "p"), images=300, seed=4)["paired"]) as st:
        assert st.labels("images") is None
