"""The selection file (SPEC §1, kind = "selection"): B pool items in selection order, with what chose them;
its CSV, Label Studio and page companions; the budget check every strategy shares."""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field

import numpy as np

from .errors import AlselError
from .h5file import attrs_dict, dataset, open_h5, read_ids, write_h5
from .output import atomic_path

SCORE_PARTS = ("intra", "inter", "hard")  # optional per-row terms of the score (ascmr; schedule: 1 = hard part)


@dataclass
class Selection:
    rows: np.ndarray
    ids: np.ndarray
    score: np.ndarray
    attrs: dict
    parts: dict = field(default_factory=dict)  # named terms of the score per selected row (ascmr: intra, inter)
    notes: list = field(default_factory=list)  # what a command says on stderr (left-out items, the fill)


def check_budget(budget: int, pool_size: int, where: str, left_out: int = 0, skipped: int = 0) -> None:
    """`pool_size`: the items that may be chosen; `left_out`: already paired ones besides them; `skipped`:
    ones annotators skipped."""
    if budget <= 0:
        raise AlselError(f"--budget must be at least 1, got {budget}")
    if budget > pool_size:
        why = [f"{left_out} more are already paired"] * bool(left_out) + \
              [f"{skipped} more were skipped by annotators"] * bool(skipped)
        extra = f" that may be chosen; {'; '.join(why)}" if why else ""
        raise AlselError(f"{where}: --budget {budget} is larger than the pool ({pool_size} items{extra})")


# --------------------------------------------------------------------------- file


def save_selection(out: str, sel: Selection, csv_path: str | None = None, inputs: tuple = (),
                   created_by: str | None = None, labelstudio: str | None = None,
                   image_url_prefix: str | None = None, document_root: str | None = None,
                   page: tuple[str, str] | None = None) -> None:
    """Write the selection file and, optionally, a CSV (`rank,id,row,score`, then `path` where the pool
    records an image_root, then the score's named parts), a Label Studio import file and the batch page
    (`page`: its path and its HTML, alsel.page); all or none (each atomically, the HDF5 file last)."""
    from .annotation import image_path, labelstudio_tasks
    from .figures import csv_value

    datasets = {"row": sel.rows, "id": sel.ids, "score": sel.score, **sel.parts}
    root = str(sel.attrs.get("image_root", "")) or None
    with contextlib.ExitStack() as stack:
        if labelstudio is not None:
            tasks = labelstudio_tasks(sel.ids, sel.score, root, image_url_prefix, document_root)
            tmp_ls = stack.enter_context(atomic_path(labelstudio, inputs))
            with open(tmp_ls, "w", encoding="utf-8") as fh:
                json.dump(tasks, fh, indent=1, ensure_ascii=False)
                fh.write("\n")
        if page is not None:
            tmp_page = stack.enter_context(atomic_path(page[0], inputs))
            with open(tmp_page, "w", encoding="utf-8") as fh:
                fh.write(page[1])
        if csv_path is not None:
            names = list(sel.parts)
            tmp_csv = stack.enter_context(atomic_path(csv_path, inputs))
            with open(tmp_csv, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["rank", "id", "row", "score", *(["path"] if root else []), *names])
                for r, (i, row, s) in enumerate(zip(sel.ids, sel.rows, sel.score), start=1):
                    w.writerow([r, i, int(row), csv_value(s), *([image_path(root, i)] if root else []),
                                *(csv_value(sel.parts[k][r - 1]) for k in names)])
        write_h5(out, "selection", datasets, sel.attrs, inputs=inputs, created_by=created_by)


def read_selection(path: str) -> Selection:
    """A selection file, checked."""
    with open_h5(path, "selection") as f:
        attrs = attrs_dict(f)
        rows = np.asarray(dataset(f, "/row", path, ndim=1, kind="i")[:], dtype=np.int64)
        ids = read_ids(dataset(f, "/id", path, ndim=1, kind="S", length=len(rows)), path)
        score = np.asarray(dataset(f, "/score", path, ndim=1, kind="f", length=len(rows))[:], np.float32)
        parts = {k: np.asarray(dataset(f, f"/{k}", path, ndim=1, kind="f", length=len(rows))[:], np.float32)
                 for k in SCORE_PARTS if k in f}
    if attrs.get("select", "images") not in ("images", "texts"):
        raise AlselError(f"{path}: attribute 'select' is {attrs.get('select')!r}, expected 'images' or 'texts'")
    return Selection(rows, ids, score, attrs, parts)
