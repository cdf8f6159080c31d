"""Retrieval metrics of SPEC §4: R@1/5/10 both ways, R-sum, R@1-sum, computed in blocks.

image→text: rank(i) = #{texts l of other images : s(i, l) >= max_{c of i} s(i, c)}
text→image: rank(t) = #{images x != i(t) : s(x, t) >= s(x_i(t), t)}
R@K = % of queries with rank < K. `>=` makes ties count against the query. Both passes run over the
streaming sweep (queries tiled, gallery resident in column blocks): first the positive score per
query (the max over its own columns, taken from the same tiles as the competitors so equal
embeddings give bit-equal scores), then the count of competitors at or above it. No more than one
tile of the similarity matrix exists at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .stream import ArrayRows, collect, own_columns, sweep, to_device

KS = (1, 5, 10)
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "r1sum")


class OwnMax:
    """Reducer: per row, the largest value among the row's own columns (-inf if none)."""

    def __init__(self, row_owner, col_owner):
        self.row_owner, self.col_owner = row_owner, col_owner

    def init(self, n, r0):
        return torch.full((n,), -torch.inf, device=self.row_owner.device)

    def update(self, state, s, r0, c0):
        own = own_columns(self.row_owner, self.col_owner, r0, c0, s.shape)
        return torch.maximum(state, s.masked_fill(~own, -torch.inf).amax(dim=1))

    def finish(self, state):
        return (state,)


class CountAtLeast:
    """Reducer: per row, the number of other-owner columns scoring >= the row's positive."""

    def __init__(self, positive, row_owner, col_owner):
        self.positive, self.row_owner, self.col_owner = positive, row_owner, col_owner

    def init(self, n, r0):
        return torch.zeros(n, dtype=torch.int64, device=self.row_owner.device)

    def update(self, state, s, r0, c0):
        own = own_columns(self.row_owner, self.col_owner, r0, c0, s.shape)
        beat = (s >= self.positive[r0:r0 + s.shape[0], None]) & ~own
        return state + beat.sum(dim=1)

    def finish(self, state):
        return (state,)


def ranks(queries: np.ndarray, gallery: np.ndarray, query_owner: np.ndarray, gallery_owner: np.ndarray,
          device: torch.device, chunk_size: int | None = None) -> np.ndarray:
    """Rank of each query's best own gallery item among the other-owner items (ties against it)."""
    rows = ArrayRows(queries)
    resident = to_device(gallery, device)
    q_own = torch.from_numpy(np.asarray(query_owner, dtype=np.int64)).to(device)
    g_own = torch.from_numpy(np.asarray(gallery_owner, dtype=np.int64)).to(device)
    (positive,) = collect(sweep(rows, resident, OwnMax(q_own, g_own), device=device, chunk_size=chunk_size))
    pos = torch.from_numpy(positive).to(device)
    (rank,) = collect(sweep(rows, resident, CountAtLeast(pos, q_own, g_own), device=device, chunk_size=chunk_size))
    return rank


def recall(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray, device: torch.device,
           chunk_size: int | None = None) -> dict[str, float]:
    """Metrics in percent for unit-row embeddings (already through a head, if any)."""
    text_image = np.asarray(text_image, dtype=np.int64)
    if len(texts) == 0 or len(images) == 0:
        raise AlselError("evaluation needs at least one image and one text")
    n_i = len(images)
    described = np.bincount(text_image[text_image >= 0], minlength=n_i) > 0
    i2t = ranks(images, texts, np.arange(n_i), text_image, device, chunk_size)[described]
    keep = text_image >= 0
    t2i = ranks(texts[keep], images, text_image[keep], np.arange(n_i), device, chunk_size)
    out = {}
    for k in KS:
        out[f"i2t_r{k}"] = 100.0 * float(np.mean(i2t < k))
    for k in KS:
        out[f"t2i_r{k}"] = 100.0 * float(np.mean(t2i < k))
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in KS)
    out["r1sum"] = out["i2t_r1"] + out["t2i_r1"]
    return out


def mrr(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray, device: torch.device) -> float:
    """Mean reciprocal rank 1 / (1 + rank), averaged over the image→text and text→image queries (ranks
    as for R@K, ties against the query): the early-stopping signal of training, smoother than R@K on
    small validation splits."""
    text_image = np.asarray(text_image, dtype=np.int64)
    n_i = len(images)
    described = np.bincount(text_image, minlength=n_i) > 0
    i2t = ranks(images, texts, np.arange(n_i), text_image, device)[described]
    t2i = ranks(texts, images, text_image, np.arange(n_i), device)
    return float((np.mean(1.0 / (1 + i2t)) + np.mean(1.0 / (1 + t2i))) / 2)


MAP_QUERY_CHUNK = 256  # queries per block: a block holds its full similarity rows (chunk x N_gallery)
MAP_KEYS = ("i2t_map", "t2i_map")


def average_precision(queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray,
                      device: torch.device, chunk: int = MAP_QUERY_CHUNK) -> np.ndarray:
    """AP over the whole ranked gallery (mAP@all) of each query; a gallery item is relevant when it shares
    a label with the query; ties in similarity rank the lower gallery row first. NaN for a query with
    no relevant item. AP = Σ_k rel_k · P@k / #relevant."""
    g = to_device(gallery, device)
    g_lab = to_device(g_labels, device)
    ranks = torch.arange(1, len(gallery) + 1, device=device, dtype=torch.float64)
    out = np.empty(len(queries), dtype=np.float64)
    for a in range(0, len(queries), chunk):
        s = to_device(queries[a:a + chunk], device) @ g.T
        order = torch.sort(-s, dim=1, stable=True).indices
        rel = (to_device(q_labels[a:a + chunk], device) @ g_lab.T > 0).gather(1, order).double()
        n_rel = rel.sum(dim=1)
        ap = (rel * rel.cumsum(dim=1) / ranks).sum(dim=1) / n_rel
        out[a:a + len(s)] = torch.where(n_rel > 0, ap, torch.nan).cpu().numpy()
    return out


def label_map(images: np.ndarray, image_labels: np.ndarray, texts: np.ndarray, text_labels: np.ndarray,
              device: torch.device) -> dict[str, float]:
    """mAP@all image→text (gallery: all texts) and text→image (gallery: all images), as fractions;
    queries without any relevant item are left out."""
    i2t = average_precision(images, image_labels, texts, text_labels, device)
    t2i = average_precision(texts, text_labels, images, image_labels, device)
    if np.isnan(i2t).all() or np.isnan(t2i).all():
        raise AlselError("mAP: no query shares a label with any gallery item")
    return {"i2t_map": float(np.nanmean(i2t)), "t2i_map": float(np.nanmean(t2i))}


def store_labels(store, group: str) -> np.ndarray:
    """A test store's labels; captions without their own take their image's."""
    labels = store.labels(group)
    if labels is None and group == "texts" and store.labels("images") is not None:
        labels = store.labels("images")[store.text_image]
    if labels is None:
        raise AlselError(f"{store.path}: has no /{group}/labels (multi-hot class labels), which this needs")
    return labels


def evaluate(store, device: torch.device, head=None, chunk_size: int | None = None,
             progress: Callable[[int], None] | None = None, labels: bool = False) -> dict[str, float]:
    """Metrics of a paired test store (alsel.store.Store), raw or through `head` (alsel.head.Head);
    with `labels`, also mAP@all both ways (supervised cross-modal retrieval)."""
    images = store.images.read()
    texts = store.texts.read()
    if head is not None:
        images = head.encode(images, "image", device)
        texts = head.encode(texts, "text", device)
    result = recall(images, texts, store.text_image, device, chunk_size)
    if labels:
        result.update(label_map(images, store_labels(store, "images"), texts, store_labels(store, "texts"), device))
    if progress is not None:
        progress(1)
    return result
