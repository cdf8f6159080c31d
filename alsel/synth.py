"""A "finely categorized" synthetic world for tests, demos and CI.

Coarse classes split into fine classes; an item's latent z is a mix of its coarse direction, its
fine direction and its own noise, so members of a fine class sit close together (cosine ≈ 0.8),
members of a coarse class less so (≈ 0.5), the rest near 0: exactly the setting where hard
negatives matter. Images embed z plus a fixed modality offset and noise; each caption embeds a
slightly rotated z (texts and images live in related, not identical, spaces, as in CLIP) plus its
own noise and offset. Written as DIR/paired.h5, pool_images.h5, pool_texts.h5, test.h5 and
oracle.h5 (the pool images with their hidden captions, for simulation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import AlselError
from .store import write_store

# variance shares of the latent: coarse, fine, individual
COARSE, FINE, OWN = 0.5, 0.3, 0.2
IMAGE_NOISE = 0.8
CAPTION_NOISE = 1.6
MODALITY_OFFSET = 0.6
TEXT_ROTATION = 0.8  # size of the skew-symmetric generator of the text-space rotation
FILES = ("paired.h5", "pool_images.h5", "pool_texts.h5", "test.h5", "oracle.h5")


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _rotation(dim: int, rng: np.random.Generator, size: float) -> np.ndarray:
    from scipy.linalg import expm

    g = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return expm(size * (g - g.T))


@dataclass
class World:
    images: np.ndarray  # (N, D) float32 unit
    captions: np.ndarray  # (N * C, D) float32 unit, caption c of image i at row i * C + c
    coarse: np.ndarray  # (N,) coarse class of each image
    fine: np.ndarray  # (N,) fine class (global index)
    labels: np.ndarray | None = None  # (N, classes) uint8 multi-hot, with multi_label


EXTRA_LABEL_P = 0.3  # multi-label worlds: chance that an image also shows a second coarse class
EXTRA_LABEL_WEIGHT = 0.5  # share of that class's direction in the latent


def make_world(images: int = 2000, captions: int = 5, classes: int = 50, fine_per_class: int = 4,
               dim: int = 64, seed: int = 0, multi_label: bool = False) -> World:
    """multi_label: labels are the coarse classes, multi-hot; an image also shows a second class with
    probability EXTRA_LABEL_P (its direction mixed into the latent). Drawn from a separate stream, so
    the world without labels is unchanged."""
    if images < 1 or captions < 1 or classes < 1 or fine_per_class < 1 or dim < 2:
        raise AlselError("synth: --images, --captions, --classes and --fine must be >= 1 and --dim >= 2")
    rng = np.random.default_rng(seed)
    coarse_dir = _unit(rng.standard_normal((classes, dim)))
    fine_dir = _unit(rng.standard_normal((classes * fine_per_class, dim)))
    fine = rng.integers(0, classes * fine_per_class, size=images)
    coarse = fine // fine_per_class
    own = _unit(rng.standard_normal((images, dim)))
    z = np.sqrt(COARSE) * coarse_dir[coarse] + np.sqrt(FINE) * fine_dir[fine] + np.sqrt(OWN) * own
    labels = None
    if multi_label:
        lrng = np.random.default_rng([seed, 1])
        labels = np.zeros((images, classes), dtype=np.uint8)
        labels[np.arange(images), coarse] = 1
        extra = (coarse + lrng.integers(1, classes, size=images)) % classes if classes > 1 else coarse
        has = (lrng.random(images) < EXTRA_LABEL_P) & (classes > 1)
        labels[np.flatnonzero(has), extra[has]] = 1
        z = z + has[:, None] * np.sqrt(EXTRA_LABEL_WEIGHT) * coarse_dir[extra]
    z = _unit(z)
    offset_img = _unit(rng.standard_normal(dim)) * MODALITY_OFFSET
    offset_txt = _unit(rng.standard_normal(dim)) * MODALITY_OFFSET
    rot = _rotation(dim, rng, TEXT_ROTATION)
    img = _unit(z + offset_img + IMAGE_NOISE * rng.standard_normal((images, dim)) / np.sqrt(dim))
    zt = np.repeat(z @ rot.T, captions, axis=0)
    cap = _unit(zt + offset_txt + CAPTION_NOISE * rng.standard_normal((images * captions, dim)) / np.sqrt(dim))
    return World(img.astype(np.float32), cap.astype(np.float32), coarse, fine, labels)


def split_sizes(n: int, paired: float, test: float) -> tuple[int, int, int]:
    """Images in the paired, test and pool parts of a synthetic world of n images."""
    if not (0 < paired < 1 and 0 <= test < 1 and paired + test < 1):
        raise AlselError("synth: need 0 < --paired < 1, 0 <= --test < 1 and --paired + --test < 1")
    n_paired = max(1, int(round(n * paired)))
    n_test = int(round(n * test))
    n_pool = n - n_paired - n_test
    if n_pool < 1:
        raise AlselError(f"synth: {n} images leave no pool after the paired and test splits")
    return n_paired, n_pool, n_test


def synth_stores(out_dir: str, images: int = 2000, captions: int = 5, classes: int = 50, fine_per_class: int = 4,
          dim: int = 64, seed: int = 0, paired: float = 0.1, test: float = 0.2,
          dtype: str = "float16", created_by: str | None = None, multi_label: bool = False) -> dict[str, str]:
    """Generate the world and write its five stores into out_dir (created if missing); with
    multi_label, every store carries /images/labels and /texts/labels (a caption has its image's)."""
    world = make_world(images, captions, classes, fine_per_class, dim, seed, multi_label)
    n_paired, n_pool, n_test = split_sizes(images, paired, test)
    order = np.random.default_rng(seed + 1).permutation(images)
    split = {"paired": order[:n_paired], "pool": order[n_paired:n_paired + n_pool],
             "test": order[n_paired + n_pool:]}
    created_dir = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    new_files: list[str] = []  # written by this call where no file was: removed if it stops half-way
    try:
        return _write_world(world, split, out_dir, captions, dim, seed, dtype, created_by, new_files)
    except BaseException:  # stopped or failed: no half-written world stays behind
        for p in new_files:
            os.remove(p)
        if created_dir and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise


def _write_world(world, split, out_dir, captions, dim, seed, dtype, created_by, new_files) -> dict[str, str]:
    paths: dict[str, str] = {}

    def write(name, **arrays):
        path = paths[name] = os.path.join(out_dir, f"{name}.h5")
        fresh = not os.path.exists(path)
        write_store(path, **arrays, **common)
        if fresh:
            new_files.append(path)

    model = f"synthetic-d{dim}-seed{seed}"
    common = dict(model=model, pretrained="synthetic", dtype=dtype, created_by=created_by)

    def pairs(idx):
        img_ids = np.array([f"img{i:06d}" for i in idx], dtype=object)
        cap_rows = (idx[:, None] * captions + np.arange(captions)[None, :]).ravel()
        txt_ids = np.array([f"img{i:06d}#c{c}" for i in idx for c in range(captions)], dtype=object)
        text_image = np.repeat(np.arange(len(idx)), captions)
        return img_ids, cap_rows, txt_ids, text_image

    def labels_of(idx):
        if world.labels is None:
            return {}
        return {"image_labels": world.labels[idx], "text_labels": np.repeat(world.labels[idx], captions, axis=0)}

    for name, idx in (("paired", split["paired"]), ("test", split["test"]), ("oracle", split["pool"])):
        if len(idx) == 0:
            continue
        img_ids, cap_rows, txt_ids, text_image = pairs(idx)
        write(name, images=world.images[idx], image_ids=img_ids, texts=world.captions[cap_rows],
              text_ids=txt_ids, text_image=text_image, **labels_of(idx))
    img_ids, cap_rows, txt_ids, _ = pairs(split["pool"])
    pool_labels = labels_of(split["pool"])
    write("pool_images", images=world.images[split["pool"]], image_ids=img_ids,
          image_labels=pool_labels.get("image_labels"))
    write("pool_texts", texts=world.captions[cap_rows], text_ids=txt_ids, text_labels=pool_labels.get("text_labels"))
    return paths
