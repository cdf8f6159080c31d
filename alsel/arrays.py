"""The Python API on arrays: thresholds, hard-negative scores, every strategy and the metrics without
HDF5 files. Inputs are numpy arrays or torch tensors of unit rows (N, D); outputs are numpy arrays.

    import alsel
    xi = alsel.xi(paired_images, paired_texts)                  # one threshold per paired text
    s = alsel.hard_negative_scores(paired_images, paired_texts, pool_images)
    picks = alsel.select("typiclust", pool_images, 25, paired_images=..., paired_texts=...)
    alsel.recall(test_images, test_texts)["rsum"]

`text_image` (the image row each text describes) defaults to 0..N-1: text i describes image i. The
arrays go into an in-memory store (`memory_store`), so every result is the one the commands give on
the same rows written to files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import h5py
import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .store import Store, load_paired, normalize_rows, open_store_file
from .h5file import STR_DTYPE, set_root_attrs
from .stream import resolve_device

_COUNTER = itertools.count()


def as_rows(x, name: str) -> np.ndarray:
    """float32 (N, D) unit rows from a numpy array or torch tensor (checked: finite, unit length)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise AlselError(f"{name}: expected an (N, D) array of unit rows, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    normalize_rows(x.copy(), name, "rows")
    return x


def _ids(ids, n: int, where: str) -> np.ndarray:
    if ids is None:  # "<store name>:<row>": a pool's rows never take a paired store's ids by accident
        return np.array([f"{where.split()[0]}:{i}" for i in range(n)], dtype=object)
    ids = [str(v) for v in ids]
    if len(ids) != n:
        raise AlselError(f"{where}: {len(ids)} ids for {n} rows")
    return np.array(ids, dtype=object)


def memory_store(images=None, texts=None, text_image=None, *, image_ids=None, text_ids=None,
                 image_labels=None, text_labels=None, text_strings=None, model: str = "arrays",
                 name: str = "arrays") -> Store:
    """An opened store held in memory (an HDF5 core file, never written): what every stage that takes a
    Store accepts. Ids default to "<name>:<row>" (e.g. pool:17); texts of a store with images default to
    text_image = 0..N-1 (text i describes image i), a texts-only store (a text pool) to -1."""
    f = h5py.File(f"alsel-memory-{next(_COUNTER)}", "w", driver="core", backing_store=False)  # never on disk
    try:
        set_root_attrs(f, "store", {"model": model, "pretrained": "arrays"}, "alsel.arrays")
        n_i = None
        for group, rows, ids, labels in (("images", images, image_ids, image_labels),
                                         ("texts", texts, text_ids, text_labels)):
            if rows is None:
                continue
            rows = as_rows(rows, f"{name} {group}")
            g = f.create_group(group)
            g.create_dataset("emb", data=rows)
            g.create_dataset("id", data=_ids(ids, len(rows), f"{name} {group}"), dtype=STR_DTYPE)
            if labels is not None:
                g.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8))
            if group == "images":
                n_i = len(rows)
            else:
                if text_image is None:
                    ti = np.arange(len(rows)) if n_i is not None else np.full(len(rows), -1)
                    if n_i is not None and len(rows) != n_i:
                        raise AlselError(f"{name}: {len(rows)} texts and {n_i} images: give text_image "
                                         f"(the image row of each text)")
                else:
                    ti = np.asarray(text_image.cpu() if isinstance(text_image, torch.Tensor) else text_image)
                    if ti.shape != (len(rows),):
                        raise AlselError(f"{name}: text_image has shape {ti.shape}, expected ({len(rows)},)")
                g.create_dataset("image", data=ti.astype(np.int64))
                if text_strings is not None:  # the caption strings (/texts/text)
                    g.create_dataset("text", data=np.asarray([str(x) for x in text_strings], dtype=object),
                                     dtype=STR_DTYPE)
        return open_store_file(f, name)
    except BaseException:
        f.close()
        raise


def _paired(images, texts, text_image, name: str = "paired") -> Store:
    if images is None or texts is None:
        raise AlselError(f"{name}: needs both paired_images and paired_texts")
    return memory_store(images, texts, text_image, name=name)


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def xi(paired_images, paired_texts, text_image=None, *, select: str = "images", top_k: int = 1,
       batch: str = "full", batch_size: int = 128, margin: float = 0.2, form: str = "loss", seed: int = 0,
       device="auto", head=None) -> np.ndarray:
    """ξ_j per paired text (float32, N_t), as `alsel threshold` writes: loss ξ = max(h, p - α), rank
    ξ = h, margin ξ = p - α (h: the k-th hardest negative, p: the positive similarity)."""
    from .head import through_head
    from .thresholds import ThresholdParams, make_thresholds

    dev = _device(device)
    params = ThresholdParams(select=select, top_k=top_k, batch=batch, batch_size=batch_size, margin=margin,
                             form=form, seed=seed)
    with _paired(paired_images, paired_texts, text_image) as st:
        p = through_head(load_paired(st), head, dev)
        return make_thresholds(p, params, dev).xi


@dataclass
class HardNegativeScores:
    """Per pool row: count = #{j : c_j > 0}, surplus = Σ max(0, c_j), score = the chosen weight,
    closest = max_j c_j (c_j = s(x, t_j) - ξ_j on the images side)."""

    count: np.ndarray
    score: np.ndarray
    closest: np.ndarray


def hard_negative_scores(paired_images, paired_texts, pool, text_image=None, *, weight: str = "surplus",
                         select: str = "images", top_k: int = 1, batch: str = "full", batch_size: int = 128,
                         margin: float = 0.2, form: str = "loss", seed: int = 0, device="auto",
                         head=None) -> HardNegativeScores:
    """What `alsel score` computes for the pool rows (the unpaired side named by `select`)."""
    from .head import through_head
    from .scoring import score_pool
    from .thresholds import ThresholdParams, make_thresholds

    dev = _device(device)
    params = ThresholdParams(select=select, top_k=top_k, batch=batch, batch_size=batch_size, margin=margin,
                             form=form, seed=seed)
    with _paired(paired_images, paired_texts, text_image) as st, \
            memory_store(**{select: pool}, name="pool") as pool_store:
        p = through_head(load_paired(st), head, dev)
        th = make_thresholds(p, params, dev)
        res = score_pool(pool_store, p, th, weight, dev, head=head)
    return HardNegativeScores(res.count, res.score, res.closest)


def select(strategy: str, pool, budget: int, *, paired_images=None, paired_texts=None, text_image=None,
           pool_texts=None, pool_text_image=None, pool_ids=None, head=None, seed: int = 0, device="auto",
           **options):
    """Choose `budget` rows of `pool` with a registered strategy (`alsel strategies` lists them).

    `pool` holds the side to choose from (images, or texts with select="texts"); the ASCMR strategies
    choose among pairs: give pool_texts (and pool_text_image) beside pool images. Options are the
    strategy options by name (top_k=3, fill="closest", clusters=10, ...) or as tokens in `strategy`
    ("hn-top3-counting"). Returns the Selection: .rows (pool rows, most wanted first), .score, .ids."""
    from . import strategies

    side = options.get("select") or "images"
    if side not in ("images", "texts"):
        raise AlselError(f"select={side!r}: expected 'images' or 'texts'")
    dev = _device(device)
    paired = _paired(paired_images, paired_texts, text_image) if paired_images is not None else None
    try:
        if side == "texts":
            pool_store = memory_store(texts=pool, text_ids=pool_ids, name="pool")
        else:
            pool_store = memory_store(pool, pool_texts, pool_text_image, image_ids=pool_ids, name="pool")
        with pool_store:
            inputs = strategies.Inputs(pool=pool_store, budget=budget, paired=paired, head=head, seed=seed,
                                       device=dev)
            return strategies.select(strategy, inputs, where="strategy", **options)
    finally:
        if paired is not None:
            paired.close()


def recall(images, texts, text_image=None, *, device="auto", head=None) -> dict[str, float]:
    """R@1/5/10 image→text and text→image, R-sum and R@1-sum in percent, as `alsel eval` (ties count
    against the query)."""
    from . import metrics

    dev = _device(device)
    with memory_store(images, texts, text_image, name="test") as st:
        return metrics.evaluate(st, dev, head)
