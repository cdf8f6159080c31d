"""`alsel import`: stores from .npy arrays and from clip-retrieval output folders.

clip-retrieval (`clip-retrieval inference`) writes, per output shard k, `img_emb/img_emb_k.npy`,
`text_emb/text_emb_k.npy` and `metadata/metadata_k.parquet`, row-aligned: row r of shard k is one
sample (an image and its caption). Ids come from the metadata's `image_path` (or `url`) column where
present, else `<folder>:<k>:<r>`; text ids are the image id plus `#caption`. Caption strings, when the
metadata has them, are kept in `/texts/text`. Arrays are read memory-mapped and written in slices,
so folders larger than memory import in constant memory.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from .errors import AlselError
from .store import StoreWriter, normalize_rows
from .h5file import check_labels

WRITE_ROWS = 65536


def load_npy(path: str, what: str) -> np.ndarray:
    """A .npy array, memory-mapped, checked to be embeddings (`emb`), an index (`index`) or as it is."""
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise AlselError(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
    if what == "emb":
        if arr.ndim != 2 or arr.dtype.kind != "f":
            raise AlselError(f"{path}: expected a 2-D float array of embeddings, found {arr.dtype} {arr.shape}")
        if arr.shape[1] == 0:
            raise AlselError(f"{path}: embeddings have zero length (D = 0)")
    elif what == "index":
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise AlselError(f"{path}: expected a 1-D integer array (text -> image row), found {arr.dtype} {arr.shape}")
    return arr


def load_ids(path: str | None, n: int, default_prefix: str) -> np.ndarray:
    """Ids from a text file (one per line) or a .npy of strings; default `<prefix>:<row>`."""
    if path is None:
        return np.array([f"{default_prefix}:{i}" for i in range(n)], dtype=object)
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    if path.endswith(".npy"):
        try:
            ids = [str(x) for x in np.load(path, allow_pickle=False)]
        except ValueError as e:
            raise AlselError(f"{path}: not a .npy array of strings ({e})") from None
    else:
        with open(path, encoding="utf-8") as fh:
            ids = [line.rstrip("\r\n") for line in fh]
        if ids and ids[-1] == "":
            ids.pop()
    if len(ids) != n:
        raise AlselError(f"{path}: {len(ids)} ids for {n} rows")
    return np.array(ids, dtype=object)


def _prepare(rows: np.ndarray, path: str, name: str, start: int, normalize: bool) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32).copy()
    if normalize:
        norms = np.linalg.norm(x, axis=1)
        bad = ~np.isfinite(norms) | (norms == 0)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise AlselError(f"{path}: row {start + r} is zero, NaN or infinite; cannot normalise")
        x /= norms[:, None]
    else:
        normalize_rows(x.copy(), path, name, start)
    return x


def _copy_rows(w: StoreWriter, group: str, sources: list[tuple[str, np.ndarray]], ids: np.ndarray,
               normalize: bool, dtype: np.dtype) -> None:
    at = 0
    for path, arr in sources:
        for s in range(0, len(arr), WRITE_ROWS):
            x = _prepare(arr[s:s + WRITE_ROWS], path, "embeddings", s, normalize)
            w.write(group, at, x.astype(dtype), ids[at:at + len(x)])
            at += len(x)


def import_arrays(out: str, *, images: str | None = None, texts: str | None = None,
                  text_image: str | None = None, aligned: bool = False, image_ids: str | None = None,
                  text_ids: str | None = None, model: str = "imported", normalize: bool = False,
                  dtype: str | None = None, created_by: str | None = None, image_labels: str | None = None,
                  text_labels: str | None = None, group_images: bool = False, texts_text: str | None = None) -> dict:
    """Labels: optional multi-hot .npy arrays (N, C) for either side (/images/labels, /texts/labels).

    With `aligned`, identical image rows (a per-caption export: one image row repeated for each of its
    captions) stop the import unless `group_images`, which keeps each distinct image once (its first row
    and id) with all its captions. `texts_text`: the caption strings, one per text row (read_texts), kept as
    /texts/text. Returns counts (images, texts, grouped: image rows folded away)."""
    if group_images and not aligned:
        raise AlselError("import: --group-images goes with --aligned (it folds the repeated image rows of a "
                         "per-caption export)")
    if images is None and texts is None:
        raise AlselError("import: give --images and/or --texts (or --clip-retrieval DIR)")
    if texts_text is not None and texts is None:
        raise AlselError(f"{texts_text}: --texts-text gives the strings of --texts, which is missing")
    img = load_npy(images, "emb") if images else None
    txt = load_npy(texts, "emb") if texts else None
    strings = read_texts(texts_text, len(txt)) if texts_text is not None else None
    labels = {}
    for group, rows, lab_path, flag in (("images", img, image_labels, "--image-labels"),
                                        ("texts", txt, text_labels, "--text-labels")):
        if lab_path is not None:
            if rows is None:
                raise AlselError(f"{lab_path}: {flag} given without the {group} it labels")
            labels[group] = check_labels(np.asarray(load_npy(lab_path, "labels")), lab_path, "labels", len(rows))
    if img is not None and txt is not None and img.shape[1] != txt.shape[1]:
        raise AlselError(f"{texts}: D = {txt.shape[1]} does not match {images} (D = {img.shape[1]})")
    ti = None
    keep_images = None  # with --group-images: the image rows kept (first of each distinct image)
    if txt is not None:
        if aligned and text_image:
            raise AlselError("import: give either --aligned or --text-image, not both")
        if aligned:
            if img is None or len(img) != len(txt):
                raise AlselError(f"{texts}: --aligned needs as many image rows as text rows")
            ti = np.arange(len(txt), dtype=np.int64)
            first, group = distinct_rows(img)
            if len(first) < len(img):
                if not group_images:
                    dup = int(np.flatnonzero(group != np.arange(len(img)))[0])
                    raise AlselError(
                        f"{images}: {len(img):,} image rows hold only {len(first):,} distinct images (row {dup} "
                        f"repeats row {first[group[dup]]}): a per-caption export, one image row per caption; add "
                        f"--group-images to import each image once with all its captions")
                keep_images, ti = first, group
        elif text_image:
            ti = np.asarray(load_npy(text_image, "index"), dtype=np.int64)
            if len(ti) != len(txt):
                raise AlselError(f"{text_image}: {len(ti)} entries for {len(txt)} texts")
            n_i = 0 if img is None else len(img)
            bad = (ti < -1) | (ti >= n_i)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise AlselError(f"{text_image}: entry {r} = {ti[r]} is out of range (0..{n_i - 1}, or -1)")
        else:
            ti = np.full(len(txt), -1, dtype=np.int64)
    if img is not None and keep_images is not None:
        img_source = np.asarray(img[keep_images])
        if "images" in labels:
            labels["images"] = labels["images"][keep_images]
    else:
        img_source = img
    with StoreWriter(out, model=model, pretrained="imported",
                     inputs=(images, texts, text_image, image_labels, text_labels, texts_text),
                     created_by=created_by) as w:
        if img is not None:
            dt = np.dtype(dtype or (img.dtype if img.dtype in (np.float16, np.float32) else np.float32))
            ids = load_ids(image_ids, len(img), os.path.splitext(os.path.basename(images))[0])
            if keep_images is not None:
                ids = ids[keep_images]
            w.add_group("images", len(img_source), img.shape[1], dt)
            _copy_rows(w, "images", [(images, img_source)], ids, normalize, dt)
        if txt is not None:
            dt = np.dtype(dtype or (txt.dtype if txt.dtype in (np.float16, np.float32) else np.float32))
            ids = load_ids(text_ids, len(txt), os.path.splitext(os.path.basename(texts))[0])
            w.add_group("texts", len(txt), txt.shape[1], dt, text_image=ti)
            _copy_rows(w, "texts", [(texts, txt)], ids, normalize, dt)
            if strings is not None:
                w.add_text(strings)
        for group, lab in labels.items():
            w.add_labels(group, lab)
    n_images = 0 if img is None else len(img_source)
    return {"images": n_images, "texts": 0 if txt is None else len(txt),
            "grouped": 0 if keep_images is None else len(img) - len(keep_images)}


def read_texts(path: str, n: int) -> list[str]:
    """Caption strings, one per text row: a .txt file (one per line), a .npy array of strings, a .json list
    of strings or a .jsonl file (one JSON string per line: captions with line breaks)."""
    import json

    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    low = path.lower()
    try:
        if low.endswith(".npy"):
            try:
                strings = [str(x) for x in np.load(path, allow_pickle=False)]
            except ValueError as e:
                raise AlselError(f"{path}: not a .npy array of strings ({e})") from None
        elif low.endswith(".json"):
            with open(path, encoding="utf-8") as fh:
                strings = json.load(fh)
        elif low.endswith(".jsonl"):
            with open(path, encoding="utf-8") as fh:
                strings = [json.loads(line) for line in fh if line.strip()]
        else:
            with open(path, encoding="utf-8") as fh:
                strings = [line.rstrip("\r\n") for line in fh]
            if strings and strings[-1] == "":
                strings.pop()
    except json.JSONDecodeError as e:
        raise AlselError(f"{path}: not JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise AlselError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(strings, list) or not all(isinstance(x, str) for x in strings):
        raise AlselError(f"{path}: expected caption strings (a list of strings)")
    if len(strings) != n:
        raise AlselError(f"{path}: {len(strings)} caption strings for {n} text rows")
    return strings


def distinct_rows(arr: np.ndarray, block: int = WRITE_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(first, group): the first row of each distinct row value (ascending) and, per row, the index of its
    distinct value in `first`. Rows are equal when their bytes are (hashed in blocks, then checked)."""
    import hashlib

    digests = np.empty(len(arr), dtype="S16")
    for s in range(0, len(arr), block):
        rows = np.ascontiguousarray(arr[s:s + block])
        digests[s:s + len(rows)] = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # distinct values in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    first, group = first[order], rank[inverse.ravel()]
    for s in range(0, len(arr), block):  # a digest collision would merge two images: never silently
        rows = np.asarray(arr[s:s + block])
        if not np.array_equal(rows, np.asarray(arr[first[group[s:s + block]]])):
            raise AlselError("import: two different image rows share a digest; cannot group them")
    return first, group


def _shards(folder: str, sub: str, prefix: str, ext: str) -> dict[int, str]:
    out = {}
    for p in glob.glob(os.path.join(folder, sub, f"{prefix}_*.{ext}")):
        m = re.fullmatch(rf"{prefix}_(\d+)\.{ext}", os.path.basename(p))
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _metadata(path: str, n: int) -> dict[str, list]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise AlselError(f"{path}: reading clip-retrieval metadata needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for bad files
        raise AlselError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
    if table.num_rows != n:
        raise AlselError(f"{path}: {table.num_rows} metadata rows for {n} embedding rows")
    return {c: table.column(c).to_pylist() for c in table.column_names}


def import_clip_retrieval(out: str, folder: str, *, model: str = "imported", normalize: bool = False,
                          dtype: str | None = None, created_by: str | None = None) -> None:
    """A store from a clip-retrieval inference folder (see the module docstring), in constant memory."""
    if not os.path.isdir(folder):
        raise AlselError(f"{folder}: no such folder")
    img_sh = _shards(folder, "img_emb", "img_emb", "npy")
    txt_sh = _shards(folder, "text_emb", "text_emb", "npy")
    meta_sh = _shards(folder, "metadata", "metadata", "parquet")
    if not img_sh and not txt_sh:
        raise AlselError(f"{folder}: no img_emb/img_emb_*.npy or text_emb/text_emb_*.npy found")
    keys = sorted(set(img_sh) | set(txt_sh))
    if img_sh and txt_sh and set(img_sh) != set(txt_sh):
        raise AlselError(f"{folder}: img_emb and text_emb shards differ ({sorted(img_sh)} vs {sorted(txt_sh)})")
    img = [(img_sh[k], load_npy(img_sh[k], "emb")) for k in keys] if img_sh else []
    txt = [(txt_sh[k], load_npy(txt_sh[k], "emb")) for k in keys] if txt_sh else []
    if img and txt:
        for (pi, a), (pt, b) in zip(img, txt):
            if len(a) != len(b):
                raise AlselError(f"{pt}: {len(b)} rows but {pi} has {len(a)}; clip-retrieval shards are row-aligned")
    arrays = img or txt
    d = arrays[0][1].shape[1]
    for p, a in img + txt:
        if a.shape[1] != d:
            raise AlselError(f"{p}: D = {a.shape[1]} differs from {arrays[0][0]} (D = {d})")
    base_ids, captions = [], []
    stem = os.path.basename(os.path.normpath(folder))
    for k, (_, a) in zip(keys, arrays):
        meta = _metadata(meta_sh[k], len(a)) if k in meta_sh else {}
        col = meta.get("image_path") or meta.get("url")
        if col:
            base_ids.extend(str(x) for x in col)
        else:
            base_ids.extend(f"{stem}:{k}:{r}" for r in range(len(a)))
        captions.extend(meta["caption"] if "caption" in meta else [None] * len(a))
    base_ids = np.array(base_ids, dtype=object)
    n = len(base_ids)
    with StoreWriter(out, model=model, pretrained="imported", created_by=created_by) as w:
        if img:
            dt = np.dtype(dtype or img[0][1].dtype)
            w.add_group("images", n, d, dt)
            _copy_rows(w, "images", img, base_ids, normalize, dt)
        if txt:
            dt = np.dtype(dtype or txt[0][1].dtype)
            ti = np.arange(n, dtype=np.int64) if img else np.full(n, -1, dtype=np.int64)
            w.add_group("texts", n, d, dt, text_image=ti)
            text_ids = base_ids + "#caption" if img else base_ids
            _copy_rows(w, "texts", txt, np.asarray(text_ids, dtype=object), normalize, dt)
            if any(c is not None for c in captions):
                w.add_text(captions)
