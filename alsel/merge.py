"""`alsel merge`: after annotation, move the selected pool items into the paired store.

Inputs: the paired store, the pool, the selection made on that pool, and a store with the new
annotations (for selected images: a store whose images carry the selected pool ids and whose texts
are their new captions, as `alsel embed --images ... --captions ...` writes; for selected texts: a
store whose texts carry the selected pool text ids and point at their new images). Outputs: a new
paired store (old pairs first, then the new ones in selection order) and the remaining pool (the
pool without the selected rows, order kept). Every id must line up; anything unmatched is an error,
and no item is lost or duplicated. Caption strings (/texts/text) travel with their rows (SPEC §8).

A selected item the annotators skipped (no caption, or only cancelled annotations) stays in the pool,
flagged in `/images/skipped` (`/texts/skipped` for selected texts), and no strategy chooses it again;
`skipped="error"` makes it an error instead.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import posixpath
from dataclasses import dataclass

import numpy as np

from .errors import AlselError
from .selection import Selection, read_selection
from .store import Store, StoreWriter, carried_attrs, check_compatible, open_store, pool_fingerprint
from .output import check_output

COPY_ROWS = 65536
SKIPPED = ("keep", "error")  # what merge does with selected items that came back without an annotation


def _rows(store: Store, group: str, rows: np.ndarray) -> np.ndarray:
    emb = store.side(group)
    return np.stack([emb.raw(int(r), int(r) + 1)[0] for r in rows]) if len(rows) else np.zeros((0, emb.d), emb.dtype)


def merge(paired_path: str, pool_path: str, selection_path: str, annotations_path: str, out_paired: str,
          out_pool: str, ignore_extra: bool = False, created_by: str | None = None, skipped: str = "keep") -> dict:
    """Write the new paired store and the remaining pool; returns counts (and the skipped ids)."""
    check_skipped_policy(skipped)
    inputs = (paired_path, pool_path, selection_path, annotations_path)
    sel, select = _checked_selection(selection_path, out_paired, out_pool, inputs)
    with contextlib.ExitStack() as stack:
        paired, pool = _open_paired_and_pool(stack, paired_path, pool_path, sel, select, selection_path)
        ann = stack.enter_context(open_store(annotations_path))
        return _merge_opened(paired, pool, ann, sel, select, out_paired, out_pool, inputs, ignore_extra, created_by,
                             skipped)


def check_skipped_policy(skipped: str) -> None:
    """--skipped keep (skipped items stay in the pool, flagged) or error (the strict rule)."""
    if skipped not in SKIPPED:
        raise AlselError(f"--skipped {skipped!r}: expected keep or error")


def nearest_id(x: str, candidates: list[str]) -> str | None:
    """The selected id a wrong id most likely meant: the same file name in a subfolder
    ('DSC067.jpg' -> 'trip/DSC067.jpg'), else the closest spelling (difflib ratio >= 0.6)."""
    base = posixpath.basename(x.replace("\\", "/"))
    same = [c for c in candidates if posixpath.basename(c) == base]
    if same:
        return same[0]
    close = difflib.get_close_matches(x, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _quoted(ids, limit: int = 3) -> str:
    shown = ", ".join(repr(x) for x in list(ids)[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_annotated(path: str, chosen_ids: list[str], annotated: set, extra: list[str], ignore_extra: bool,
                    skipped: str, what: str = "image", noun: str = "caption") -> list[str]:
    """The selected ids without an annotation (the skipped ones), after the checks that stop a merge:
    annotations of ids that were not selected (unless `ignore_extra`) and, with skipped="error", selected
    ids without one. Both are reported together, each wrong id with the selected id it most likely meant."""
    missing = [x for x in chosen_ids if x not in annotated]
    if extra and not ignore_extra:
        pool = missing or chosen_ids
        named = []
        for x in extra[:3]:
            guess = nearest_id(x, pool)
            named.append(f"{x!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        gap = (f"; {len(missing)} selected {what}s have no {noun}: {_quoted(missing)}" if missing else "")
        after = (f" (the {len(missing)} without one then count as skipped)" if missing and skipped == "keep"
                 else "")
        raise AlselError(f"{path}: {len(extra)} {noun}s are for {what}s that were not selected: "
                         f"{', '.join(named)}{more}{gap}. Use the selection's ids (the id column of its CSV); "
                         f"--ignore-extra leaves those {noun}s out{after}")
    if missing and skipped == "error":
        raise AlselError(f"{path}: {len(missing)} of {len(chosen_ids)} selected {what}s have no {noun}: "
                         f"{_quoted(missing)} (--skipped error; by default they are kept out as skipped)")
    return missing


def _checked_selection(selection_path: str, out_paired: str, out_pool: str, inputs: tuple):
    """The outputs checked (two different writable files, not inputs), then the selection and its side."""
    if os.path.abspath(out_paired) == os.path.abspath(out_pool):
        raise AlselError(f"{out_paired}: --out-paired and --out-pool must differ")
    for o in (out_paired, out_pool):
        check_output(o, inputs)
    sel = read_selection(selection_path)
    return sel, str(sel.attrs.get("select", "images"))


def _open_paired_and_pool(stack, paired_path, pool_path, sel, select, selection_path) -> tuple[Store, Store]:
    """The paired store and the pool, opened into `stack`, compatible, the selection made on this pool."""
    paired = stack.enter_context(open_store(paired_path, need="paired"))
    pool = stack.enter_context(open_store(pool_path, need=select))
    check_compatible(paired, pool)
    _check_selection(sel, pool, select, selection_path)
    return paired, pool


def _merge_opened(paired, pool, ann, sel, select, out_paired, out_pool, inputs, ignore_extra, created_by,
                  skipped: str = "keep") -> dict:
    """merge() on opened stores (`ann`: the annotations, a file's store or merge_captions' in-memory one)."""
    paired_path, annotations_path = paired.path, ann.path
    check_compatible(paired, ann)
    side = pool.side(select)
    chosen = sel.rows
    chosen_ids = [str(x) for x in sel.ids]
    if select == "images" and _is_pairs_pool(pool):
        return _merge_labelled_pairs(paired, pool, ann, chosen, chosen_ids, out_paired, out_pool, inputs,
                                     annotations_path, ignore_extra, created_by)
    annotate = _images_annotated if select == "images" else _texts_annotated
    new = annotate(paired, pool, ann, chosen, chosen_ids, annotations_path, ignore_extra, skipped)
    dtype = paired.images.dtype
    old_img, old_txt = paired.images.raw(0, paired.images.n), paired.texts.raw(0, paired.texts.n)
    img_ids = np.concatenate([paired.ids("images"), np.array(new.img_ids, dtype=object)])
    txt_ids = np.concatenate([paired.ids("texts"), np.array(new.txt_ids, dtype=object)])
    _no_duplicates(img_ids, paired_path, annotations_path, "image")
    _no_duplicates(txt_ids, paired_path, annotations_path, "text")
    text = _joined_text(paired.text_strings(), new.text, paired.texts.n, len(new.txt_ids))
    taken = chosen[~np.isin(np.array(chosen_ids, dtype=object), list(new.skipped))] if new.skipped else chosen
    keep = np.setdiff1d(np.arange(side.n), taken)
    now_skipped = pool.flags(select, "skipped")[keep] | np.isin(keep, np.setdiff1d(chosen, taken))
    with StoreWriter(out_pool, model=pool.model, pretrained=str(pool.attrs.get("pretrained", "")),
                     attrs=carried_attrs(pool), inputs=inputs, created_by=created_by) as wp:
        _copy_rows(wp, pool, select, keep, np.full(len(keep), -1, np.int64) if select == "texts" else None,
                   skipped=now_skipped)
        with StoreWriter(out_paired, model=paired.model, pretrained=str(paired.attrs.get("pretrained", "")),
                         attrs=carried_attrs(paired), inputs=inputs, created_by=created_by) as w:
            w.add_group("images", len(img_ids), paired.d, dtype)
            w.write("images", 0, np.concatenate([old_img, new.images.astype(dtype)]), img_ids)
            w.add_group("texts", len(txt_ids), paired.d, dtype,
                        text_image=np.concatenate([paired.text_image, new.text_image]))
            w.write("texts", 0, np.concatenate([old_txt, new.texts.astype(dtype)]), txt_ids)
            if text is not None:
                w.add_text(text)
            for group, ids in (("images", new.img_ids), ("texts", new.txt_ids)):
                old = paired.labels(group)
                if old is not None:  # a labelled paired set stays labelled: the new items need labels
                    labels = _labels_of(ann, group, ids, old.shape[1], annotations_path)
                    w.add_labels(group, np.concatenate([old, labels]))
    skipped_ids = [x for x in chosen_ids if x in new.skipped]
    return {"paired_images": len(img_ids), "paired_texts": len(txt_ids), "new_images": len(new.img_ids),
            "new_texts": len(new.txt_ids), "pool": len(keep), "skipped": len(skipped_ids),
            "skipped_ids": skipped_ids, "text": text is not None}


def _joined_text(old, new, n_old: int, n_new: int):
    """/texts/text of the merged store: the old strings, then the new (\"\" where one side has none);
    None when neither side holds text (a store from bare arrays stays without)."""
    if old is None and new is None:
        return None
    old = old if old is not None else np.full(n_old, "", dtype=object)
    new = np.asarray(new, dtype=object) if new is not None else np.full(n_new, "", dtype=object)
    return np.concatenate([old, new])


def merge_captions(paired_path: str, pool_path: str, selection_path: str, captions_path: str, out_paired: str,
                   out_pool: str, spec=None, device=None, batch_size: int = 64, ignore_extra: bool = False,
                   created_by: str | None = None, progress=None, skipped: str = "keep") -> dict:
    """merge() with the new captions as a file (CSV/JSONL `id,text` or a Label Studio export, see
    alsel.annotation): every check first, then only the captions are embedded (with `spec`, else the model
    the paired store records) and the selected images' embeddings are taken from the pool. Captions of
    images already paired or skipped in an earlier round (an export of a project used for several rounds)
    are left out with a note."""
    import torch

    from .annotation import read_new_captions
    from .arrays import memory_store
    from .embed import embed_texts, spec_of_store

    check_skipped_policy(skipped)
    inputs = (paired_path, pool_path, selection_path, captions_path)
    sel, select = _checked_selection(selection_path, out_paired, out_pool, inputs)
    if select != "images":
        raise AlselError(f"{selection_path}: --captions is for selected images; for selected texts give "
                         f"--annotations (a store of their images)")
    new = read_new_captions(captions_path)
    caps = new.captions
    chosen_ids = [str(x) for x in sel.ids]
    chosen = set(chosen_ids)
    notes = list(new.notes)
    with contextlib.ExitStack() as stack:
        paired, pool = _open_paired_and_pool(stack, paired_path, pool_path, sel, select, selection_path)
        unselected = list(dict.fromkeys(i for i in caps.images if i not in chosen))
        if unselected:  # an export of a project used for several rounds holds the earlier rounds' tasks
            earlier = set(paired.ids("images")) | set(pool.ids("images")[pool.flags("images", "skipped")])
            old = [i for i in unselected if i in earlier]
            if old:
                notes.append(f"{captions_path}: captions of {len(old)} images of earlier rounds (already paired or "
                             f"skipped) were left out")
            unselected = [i for i in unselected if i not in earlier]
        keep = [k for k, i in enumerate(caps.images) if i in chosen]
        missing = check_annotated(captions_path, chosen_ids, {caps.images[k] for k in keep}, unselected,
                                  ignore_extra, skipped)
        spec = spec or spec_of_store(paired.attrs, paired_path)
        if spec.name != paired.model:
            raise AlselError(f"{paired_path}: holds {paired.model!r} embeddings; captions embedded with "
                             f"{spec.name!r} would not compare with them")
        annotated = [x for x in chosen_ids if x not in set(missing)]
        rows = sel.rows[np.isin(np.array(chosen_ids, dtype=object), annotated)]
        images = pool.images.take(np.sort(rows))[np.argsort(np.argsort(rows))]  # selection order
        texts = [caps.texts[k] for k in keep]
        emb = embed_texts(texts, spec, device or torch.device("cpu"), batch_size, progress) if texts else \
            np.zeros((0, pool.d), np.float32)
        position = {x: r for r, x in enumerate(annotated)}
        ann = stack.enter_context(memory_store(images, emb, np.array([position[caps.images[k]] for k in keep],
                                                                     dtype=np.int64),
                                               image_ids=annotated, text_ids=[caps.ids[k] for k in keep],
                                               text_strings=texts, model=paired.model, name=captions_path))
        counts = _merge_opened(paired, pool, ann, sel, select, out_paired, out_pool, inputs, True, created_by,
                               skipped)
    counts["captions_embedded"] = len(texts)
    counts["cancelled"] = sum(1 for x in counts["skipped_ids"] if x in set(new.cancelled))
    counts["notes"] = notes
    return counts


def _is_pairs_pool(pool: Store) -> bool:
    """A pool of pairs (images with their captions), as ASCMR selects from."""
    return pool.images is not None and pool.texts is not None and pool.text_image is not None \
        and bool((pool.text_image >= 0).any())


def _merge_labelled_pairs(paired, pool, ann, chosen, chosen_ids, out_paired, out_pool, inputs, ann_path,
                          ignore_extra, created_by) -> dict:
    """Pool of pairs, annotations = class labels of the chosen pairs (the ASCMR setting). New paired
    store: old pairs, then the chosen images (selection order) with their pool captions and the
    annotated labels (captions: their own labels from the annotations' /texts/labels by id, else their
    image's). Remaining pool: the other images with their captions (order kept; captions of no image
    stay)."""
    old_img_labels = paired.labels("images")
    if old_img_labels is None:
        raise AlselError(f"{paired.path}: label annotations of pool pairs go into a labelled paired store, "
                         f"and this one has no /images/labels")
    n_classes = old_img_labels.shape[1]
    old_txt_labels = paired.labels("texts")
    if old_txt_labels is None:
        old_txt_labels = old_img_labels[paired.text_image]
    if ann.images is None:
        raise AlselError(f"{ann_path}: label annotations need /images (the selected pool ids) with /images/labels")
    ann_ids = set(str(x) for x in ann.ids("images"))
    missing = [x for x in chosen_ids if x not in ann_ids]
    if missing:
        raise AlselError(f"{ann_path}: selected image {missing[0]!r} has no annotation (not among its /images/id)")
    extra = ann_ids - set(chosen_ids)
    if extra and not ignore_extra:
        raise AlselError(f"{ann_path}: labels for {len(extra)} images that were not selected (e.g. "
                         f"{sorted(extra)[0]!r}); pass --ignore-extra to leave them out")
    new_img_labels = _labels_of(ann, "images", chosen_ids, n_classes, ann_path)
    ti = np.asarray(pool.text_image, dtype=np.int64)
    pos = np.full(pool.images.n, -1, dtype=np.int64)
    pos[chosen] = np.arange(len(chosen))
    owner_pos = np.where(ti >= 0, pos[np.maximum(ti, 0)], -1)
    caps = np.flatnonzero(owner_pos >= 0)
    caps = caps[np.lexsort((caps, owner_pos[caps]))]  # selection order, then caption row
    cap_ids = pool.ids_at("texts", caps)
    if ann.texts is not None and ann.labels("texts") is not None:
        new_txt_labels = _labels_of(ann, "texts", cap_ids, n_classes, ann_path)
    else:
        new_txt_labels = new_img_labels[owner_pos[caps]]
    img_ids = np.concatenate([paired.ids("images"), np.array(chosen_ids, dtype=object)])
    txt_ids = np.concatenate([paired.ids("texts"), np.asarray(cap_ids, dtype=object)])
    _no_duplicates(img_ids, paired.path, ann_path, "image")
    _no_duplicates(txt_ids, paired.path, ann_path, "text")
    keep = np.setdiff1d(np.arange(pool.images.n), chosen)
    new_pos = np.full(pool.images.n, -1, dtype=np.int64)
    new_pos[keep] = np.arange(len(keep))
    keep_caps = np.flatnonzero((ti < 0) | (owner_pos < 0))
    keep_ti = np.where(ti[keep_caps] >= 0, new_pos[np.maximum(ti[keep_caps], 0)], -1)
    dtype = paired.images.dtype
    with StoreWriter(out_pool, model=pool.model, pretrained=str(pool.attrs.get("pretrained", "")),
                     attrs=carried_attrs(pool), inputs=inputs, created_by=created_by) as wp:
        _copy_rows(wp, pool, "images", keep)
        _copy_rows(wp, pool, "texts", keep_caps, keep_ti)
        with StoreWriter(out_paired, model=paired.model, pretrained=str(paired.attrs.get("pretrained", "")),
                         attrs=carried_attrs(paired), inputs=inputs, created_by=created_by) as w:
            w.add_group("images", len(img_ids), paired.d, dtype)
            w.write("images", 0, np.concatenate([paired.images.raw(0, paired.images.n),
                                                 _rows(pool, "images", chosen).astype(dtype)]), img_ids)
            w.add_group("texts", len(txt_ids), paired.d, dtype,
                        text_image=np.concatenate([paired.text_image, paired.images.n + owner_pos[caps]]))
            w.write("texts", 0, np.concatenate([paired.texts.raw(0, paired.texts.n),
                                                _rows(pool, "texts", caps).astype(dtype)]), txt_ids)
            w.add_labels("images", np.concatenate([old_img_labels, new_img_labels]))
            w.add_labels("texts", np.concatenate([old_txt_labels, new_txt_labels]))
            text = _joined_text(paired.text_strings(), pool.text_strings(caps), paired.texts.n, len(caps))
            if text is not None:
                w.add_text(text)
    return {"paired_images": len(img_ids), "paired_texts": len(txt_ids), "new_images": len(chosen_ids),
            "new_texts": len(caps), "pool": len(keep), "skipped": 0, "skipped_ids": [], "text": text is not None}


def _labels_of(ann: Store, group: str, ids, n_classes: int, path: str) -> np.ndarray:
    """Labels of the new items, by id, from the annotations store (same classes as the paired store)."""
    labels = ann.labels(group)
    if labels is None:
        raise AlselError(f"{path}: the paired store has /{group}/labels, so the annotations need them too")
    if labels.shape[1] != n_classes:
        raise AlselError(f"{path}: /{group}/labels has {labels.shape[1]} classes, the paired store {n_classes}")
    row = {x: r for r, x in enumerate(ann.ids(group))}
    return labels[np.array([row[str(x)] for x in ids], dtype=np.int64)].reshape(len(ids), n_classes)


def _copy_rows(writer: StoreWriter, store: Store, group: str, rows: np.ndarray, text_image=None,
               skipped: np.ndarray | None = None) -> None:
    """Rows (ascending) of one group of `store`, with their ids, labels and caption strings, into a new group
    of `writer`; `skipped` flags the rows annotators skipped (default: as `store` flags them)."""
    emb = store.side(group)
    writer.add_group(group, len(rows), emb.d, emb.dtype, text_image=text_image)
    ids = store.ids(group)
    for s in range(0, len(rows), COPY_ROWS):
        part = rows[s:s + COPY_ROWS]
        writer.write(group, s, _gather(emb, part), ids[part])
    labels = store.labels(group)
    if labels is not None:
        writer.add_labels(group, labels[rows])
    if group == "texts" and store.has_text:
        writer.add_text(store.text_strings(rows))
    writer.add_flags(group, "skipped", store.flags(group, "skipped")[rows] if skipped is None else skipped)


def _gather(emb, rows: np.ndarray) -> np.ndarray:
    """Rows of `emb` (ascending `rows`) read through one contiguous slice."""
    if not len(rows):
        return np.zeros((0, emb.d), emb.dtype)
    block = emb.raw(int(rows[0]), int(rows[-1]) + 1)
    return np.asarray(block[rows - rows[0]])


def _check_selection(sel: Selection, pool: Store, select: str, path: str) -> None:
    side = pool.side(select)
    fp = sel.attrs.get("pool_fingerprint")
    if fp is not None and fp != pool_fingerprint(side, pool.model):
        raise AlselError(f"{path}: the selection was made on another pool than {pool.path}")
    if len(sel.rows) and (sel.rows.min() < 0 or sel.rows.max() >= side.n):
        raise AlselError(f"{path}: selected rows outside the pool (0..{side.n - 1})")
    if len(np.unique(sel.rows)) != len(sel.rows):
        raise AlselError(f"{path}: the selection repeats a pool row")
    ids = pool.ids(select)[sel.rows]
    bad = [i for i, (a, b) in enumerate(zip(ids, sel.ids)) if a != b]
    if bad:
        i = bad[0]
        raise AlselError(f"{path}: selected row {sel.rows[i]} has id {sel.ids[i]!r} but {pool.path} has "
                         f"{ids[i]!r} there; the ids do not line up")


def _no_duplicates(ids: np.ndarray, paired_path: str, ann_path: str, what: str) -> None:
    seen = set()
    for x in ids:
        if x in seen:
            raise AlselError(f"{ann_path}: {what} id {x!r} is already in {paired_path}")
        seen.add(x)


@dataclass
class NewItems:
    """What the annotations add to the paired store, and the selected items they left out (skipped)."""

    images: np.ndarray  # new image rows (as stored)
    img_ids: list
    texts: np.ndarray  # new text rows (as stored)
    txt_ids: list
    text_image: np.ndarray  # row in the merged store's /images of each new text
    text: np.ndarray | None  # caption strings of the new texts (None: the source has none)
    skipped: set  # selected ids without an annotation


def _images_annotated(paired, pool, ann, chosen, chosen_ids, ann_path, ignore_extra, skipped) -> NewItems:
    """Selected pool images + their new captions from the annotation store."""
    if ann.images is None or ann.texts is None or ann.text_image is None:
        raise AlselError(f"{ann_path}: annotations for selected images need /images (with the pool ids) and "
                         f"/texts (their captions, /texts/image pointing at them)")
    ann_ids = [str(x) for x in ann.ids("images")]
    ann_row = {x: r for r, x in enumerate(ann_ids)}
    caps_of: dict[int, list[int]] = {}
    for j, i in enumerate(ann.text_image):
        if i >= 0:
            caps_of.setdefault(int(i), []).append(j)
    chosen_set = set(chosen_ids)
    captioned = {x for x in ann_ids if ann_row[x] in caps_of}
    extra = [x for x in ann_ids if x in captioned and x not in chosen_set]
    missing = set(check_annotated(ann_path, chosen_ids, captioned, extra, ignore_extra, skipped))
    rows, ti, take = [], [], []
    for k, x in enumerate(chosen_ids):
        if x in missing:
            continue
        caps = caps_of[ann_row[x]]
        rows.extend(caps)
        ti.extend([paired.images.n + len(take)] * len(caps))
        take.append(k)
    take = np.array(take, dtype=np.int64)
    rows = np.array(rows, dtype=np.int64)
    return NewItems(_rows(pool, "images", chosen[take]), [chosen_ids[k] for k in take], _rows(ann, "texts", rows),
                    [str(x) for x in ann.ids("texts")[rows]], np.array(ti, dtype=np.int64),
                    ann.text_strings(rows), missing)


def _texts_annotated(paired, pool, ann, chosen, chosen_ids, ann_path, ignore_extra, skipped) -> NewItems:
    """Selected pool texts + the images annotators found for them (new, or already paired)."""
    if ann.images is None or ann.texts is None or ann.text_image is None:
        raise AlselError(f"{ann_path}: annotations for selected texts need /texts (with the pool ids) pointing "
                         f"at /images (their images)")
    ann_txt_ids = [str(x) for x in ann.ids("texts")]
    ann_txt = {x: r for r, x in enumerate(ann_txt_ids)}
    ann_img_ids = ann.ids("images")
    paired_row = {x: r for r, x in enumerate(paired.ids("images"))}
    with_image = {x for x in ann_txt_ids if ann.text_image[ann_txt[x]] >= 0}
    chosen_set = set(chosen_ids)
    extra = [x for x in ann_txt_ids if x not in chosen_set]
    missing = set(check_annotated(ann_path, chosen_ids, with_image, extra, ignore_extra, skipped,
                                  what="text", noun="image"))
    new_rows: dict[str, int] = {}
    new_img_src: list[int] = []
    ti, take = [], []
    for k, x in enumerate(chosen_ids):
        if x in missing:
            continue
        img_id = str(ann_img_ids[int(ann.text_image[ann_txt[x]])])
        if img_id in paired_row:
            ti.append(paired_row[img_id])
        else:
            if img_id not in new_rows:
                new_rows[img_id] = paired.images.n + len(new_img_src)
                new_img_src.append(int(ann.text_image[ann_txt[x]]))
            ti.append(new_rows[img_id])
        take.append(k)
    take = np.array(take, dtype=np.int64)
    return NewItems(_rows(ann, "images", np.array(new_img_src, dtype=np.int64)), list(new_rows),
                    _rows(pool, "texts", chosen[take]), [chosen_ids[k] for k in take], np.array(ti, dtype=np.int64),
                    pool.text_strings(chosen[take]), missing)
