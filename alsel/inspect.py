"""`alsel info`: a description of any alsel file (kind, attributes, datasets, a summary)."""

from __future__ import annotations

import h5py
import numpy as np

from .store import open_store
from .h5file import KINDS, attrs_dict, dataset, open_h5


def _datasets(f: h5py.File) -> dict:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out["/" + name] = {"dtype": str(obj.dtype) if h5py.check_string_dtype(obj.dtype) is None else "string",
                               "shape": list(obj.shape)}

    f.visititems(visit)
    return out


def _stats(a: np.ndarray) -> str:
    a = a[np.isfinite(a)]
    if not len(a):
        return "-"
    return f"min {a.min():.4g}, mean {a.mean():.4g}, max {a.max():.4g}"


def describe(path: str) -> dict:
    """What `alsel info` shows: kind, root attributes, datasets (dtype, shape) and a short summary."""
    with open_h5(path, KINDS) as f:
        kind = str(attrs_dict(f)["kind"])
        attrs = attrs_dict(f)
        datasets = _datasets(f)
        summary: dict = {"kind": kind}
        if kind == "thresholds" and "xi" in f:
            xi = dataset(f, "xi", path, ndim=1, kind="f")[:]
            summary.update(pairs=len(xi), xi=_stats(xi))
        elif kind == "scores" and "row" in f:
            rows = dataset(f, "row", path, ndim=1, kind="i")[:]
            summary.update(rows=len(rows), shard=attrs.get("shard"), pool_size=attrs.get("pool_size"),
                           weight=attrs.get("weight"))
            if len(rows):
                score = dataset(f, "score", path, ndim=1, kind="f", length=len(rows))[:]
                count = dataset(f, "count", path, ndim=1, kind="i", length=len(rows))[:]
                summary.update(row_range=f"{rows.min()}..{rows.max()}", score=_stats(score),
                               hard_negative_rows=int((count > 0).sum()))
        elif kind == "candidates" and "row" in f:
            summary.update(candidates=len(dataset(f, "row", path, ndim=1, kind="i")), strategy=attrs.get("strategy"),
                           shard=attrs.get("shard"), pool_rows=attrs.get("rows"), budget=attrs.get("budget"))
        elif kind == "selection" and "row" in f:
            summary.update(selected=len(dataset(f, "row", path, ndim=1, kind="i")), strategy=attrs.get("strategy"),
                           budget=attrs.get("budget"))
    if kind == "store":
        with open_store(path) as st:
            summary.update(model=st.model, pretrained=st.attrs.get("pretrained"), D=st.d,
                           images=st.images.n if st.images else 0, texts=st.texts.n if st.texts else 0)
            if st.texts is not None:
                summary["text"] = (f"yes: the caption strings of {st.texts.n} texts (/texts/text)" if st.has_text
                                   else "no: embeddings only (/texts/text absent)")
            for group in ("images", "texts"):
                n_skipped = int(st.flags(group, "skipped").sum())
                if n_skipped:
                    summary[f"skipped_{group}"] = f"{n_skipped} (annotators skipped them; never selected again)"
            if st.images is not None:
                summary["images_dtype"] = str(st.images.dtype)
                summary["memory_mapped"] = st.images.memory_mapped
            if st.text_image is not None:
                paired = int((st.text_image >= 0).sum())
                summary["paired_texts"] = paired
                summary["role"] = "paired store" if st.is_paired else (
                    "text pool" if st.images is None else "store with unpaired texts")
            else:
                summary["role"] = "image pool" if st.texts is None else "text pool"
    return {"path": path, "kind": kind, "summary": summary, "attrs": attrs, "datasets": datasets}
