import os
import sys

import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel import stream  # noqa: E402
from alsel.store import write_store  # noqa: E402

MODEL = "test-model"


# a plain progress line (stderr off a terminal): `score: 1,024/200,000 rows (0.5%), ...`
PROGRESS_LINE = __import__("re").compile(r"^[a-z][\w ():-]*: [\d,]+(/[\d,]+)? [a-z]+( \(\d+\.\d%\))?(, .*)?(; .*)?$")


def stderr_lines(err: str) -> list[str]:
    """stderr without progress lines: work that runs over a second before it meets bad input prints
    progress first, and the error is then still the one other line."""
    return [x for x in err.strip().splitlines() if not PROGRESS_LINE.match(x)]


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def random_paired(rng, n_images=13, max_captions=3, d=8):
    """Images with 1..max_captions captions each (texts not grouped by image)."""
    images = unit(rng.standard_normal((n_images, d)))
    per = rng.integers(1, max_captions + 1, size=n_images)
    text_image = np.repeat(np.arange(n_images), per)
    rng.shuffle(text_image)
    texts = unit(images[text_image] + 0.8 * rng.standard_normal((len(text_image), d)))
    return images, texts, text_image


def write_paired(path, images, texts, text_image, dtype="float32", model=MODEL, prefix="p"):
    write_store(path, images=images.astype(dtype), image_ids=[f"{prefix}img{i}" for i in range(len(images))],
                texts=texts.astype(dtype), text_ids=[f"{prefix}txt{i}" for i in range(len(texts))],
                text_image=text_image, model=model, pretrained="test", created_by="test")
    return str(path)


def write_pool(path, rows, side="images", dtype="float32", model=MODEL):
    kw = {side: rows.astype(dtype), ("image_ids" if side == "images" else "text_ids"):
          [f"u{i}" for i in range(len(rows))]}
    write_store(path, model=model, pretrained="test", created_by="test", **kw)
    return str(path)


def slow_stores(d, n_pool, n_images=200, seed=0, dim=64):
    """A paired store and a float16 pool of n_pool random rows in folder d: scoring them in small chunks
    takes seconds, time to stop a run midway. Returns (d, paired path, pool path)."""
    rng = np.random.default_rng(seed)
    images, texts, ti = random_paired(rng, n_images=n_images, max_captions=3, d=dim)
    paired = write_paired(d / "p.h5", images, texts, ti)
    pool = write_pool(d / "u.h5", unit(rng.standard_normal((n_pool, dim))), dtype="float16")
    return d, paired, pool


def stored(path, group):
    """Embeddings exactly as stored (float16 or float32), upcast."""
    with h5py.File(path, "r") as f:
        return f[f"{group}/emb"][:].astype(np.float64)


@pytest.fixture
def small_tiles(monkeypatch):
    """Force tiny compute tiles so row tiling and column blocking are exercised on small data."""
    monkeypatch.setattr(stream, "CPU_TILE_ROWS", 3)
    monkeypatch.setattr(stream, "CPU_COL_BLOCK", 5)
    monkeypatch.setattr(stream, "CPU_LOW_COL_BLOCK", 5)


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    import cli

    def run(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


COCO500 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                       "coco500-clip-vitb16", "features.npy")


@pytest.fixture(scope="session")
def coco500(tmp_path_factory):
    """The real COCO pairs as a paired store; skips where ../shared/data is absent."""
    if not os.path.exists(COCO500):
        pytest.skip("../shared/data/coco500-clip-vitb16 is not here")
    from alsel.ingest import import_arrays

    d = tmp_path_factory.mktemp("coco500")
    f = np.load(COCO500)
    np.save(d / "img.npy", f[0])
    np.save(d / "txt.npy", f[1])
    out = str(d / "coco500.h5")
    import_arrays(out, images=str(d / "img.npy"), texts=str(d / "txt.npy"), aligned=True, model="ViT-B-16")
    return out
