"""Choosing B pool items: top scores (merged over shards), random, core-set (SPEC §3)."""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from ._lazy import torch  # imported on first use (fast start)

from .errors import AlselError
from .store import (Store, atomic_path, attrs_dict, dataset, int_attr, open_h5,
                    read_ids, read_ids_at, write_h5)
from .stream import Rows, collect, sweep, to_device

# attributes every shard of one scoring run shares
SHARD_KEYS = ("weight", "select", "top_k", "batch", "batch_size", "margin", "form", "seed", "pool_size",
              "pool_fingerprint", "paired_fingerprint", "thresholds_fingerprint", "head")
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


# --------------------------------------------------------------------------- by score


@dataclass
class MergedScores:
    rows: np.ndarray
    score: np.ndarray
    count: np.ndarray
    attrs: dict
    paths: list[str]
    owner: np.ndarray  # per merged row: which file holds it
    local: np.ndarray  # and at which index of that file
    closest: np.ndarray | None = None  # None when a file predates /closest
    paired: np.ndarray | None = None  # bool: already paired (never selected)
    skipped: np.ndarray | None = None  # bool: skipped by annotators (never selected again)

    def ids_at(self, pick: np.ndarray) -> np.ndarray:
        """Ids of the merged rows `pick`, read from their shard files (only those rows: a selection
        from a pool of millions does not load millions of ids)."""
        out = np.empty(len(pick), dtype=object)
        for i, p in enumerate(self.paths):
            mine = np.flatnonzero(self.owner[pick] == i)
            if len(mine):
                with open_h5(p, "scores") as f:
                    ds = dataset(f, "/id", p, ndim=1, kind="S", length=len(f["row"]))
                    out[mine] = read_ids_at(ds, p, self.local[pick[mine]])
        return out

    @property
    def ids(self) -> np.ndarray:
        return self.ids_at(np.arange(len(self.rows)))




def load_scores(paths: list[str]) -> MergedScores:
    """Read score shards and check they cover every pool row exactly once, from one scoring run."""
    if not paths:
        raise AlselError("--scores: give at least one scores file")
    parts = []
    first_attrs = None
    for p in paths:
        with open_h5(p, "scores") as f:
            attrs = attrs_dict(f)
            attrs.setdefault("head", "none")  # written without a head
            for k in SHARD_KEYS:
                if k not in attrs:
                    raise AlselError(f"{p}: attribute {k!r} is missing")
            rows = np.asarray(dataset(f, "/row", p, ndim=1, kind="i")[:], dtype=np.int64)
            n = len(rows)
            score = np.asarray(dataset(f, "/score", p, ndim=1, kind="f", length=n)[:], dtype=np.float32)
            count = np.asarray(dataset(f, "/count", p, ndim=1, kind="i", length=n)[:], dtype=np.int64)
            dataset(f, "/id", p, ndim=1, kind="S", length=n)  # checked here, read for the chosen rows only
            closest = np.asarray(dataset(f, "/closest", p, ndim=1, kind="f", length=n)[:], dtype=np.float32) \
                if "closest" in f else None
            paired = np.asarray(dataset(f, "/paired", p, ndim=1, kind="i", length=n)[:]) if "paired" in f \
                else np.zeros(n, np.uint8)
            skipped = np.asarray(dataset(f, "/skipped", p, ndim=1, kind="i", length=n)[:]) if "skipped" in f \
                else np.zeros(n, np.uint8)
        if np.isnan(score).any():
            raise AlselError(f"{p}: /score holds NaN values")
        if closest is not None and np.isnan(closest).any():
            raise AlselError(f"{p}: /closest holds NaN values")
        if not np.isin(paired, (0, 1)).all():
            raise AlselError(f"{p}: /paired holds values other than 0 and 1")
        if not np.isin(skipped, (0, 1)).all():
            raise AlselError(f"{p}: /skipped holds values other than 0 and 1")
        if first_attrs is None:
            first_attrs, first_path = attrs, p
        else:
            for k in SHARD_KEYS:
                if attrs[k] != first_attrs[k]:
                    raise AlselError(f"{p}: {k} = {attrs[k]!r} differs from {first_path} ({first_attrs[k]!r}); "
                                     f"shards must come from one scoring run")
        pool_size = int_attr(attrs, "pool_size", p, minimum=0)
        int_attr(attrs, "seed", p)
        if n and (rows.min() < 0 or rows.max() >= pool_size):
            raise AlselError(f"{p}: /row values outside 0..{pool_size - 1}")
        parts.append((p, rows, skipped.astype(bool), score, count, closest, paired.astype(bool)))
    pool_size = int(first_attrs["pool_size"])
    rows = np.concatenate([x[1] for x in parts])
    owner = np.concatenate([np.full(len(x[1]), i) for i, x in enumerate(parts)])
    order = np.argsort(rows, kind="stable")
    rows_sorted = rows[order]
    dup = np.flatnonzero(np.diff(rows_sorted) == 0)
    if len(dup):
        r = rows_sorted[dup[0]]
        a, b = parts[owner[order[dup[0]]]][0], parts[owner[order[dup[0] + 1]]][0]
        where = f"{a} and {b}" if a != b else f"{a} (twice)"
        raise AlselError(f"{where}: shards overlap: pool row {r} is scored more than once")
    if len(rows_sorted) != pool_size:
        covered = np.zeros(pool_size, dtype=bool)
        covered[rows_sorted] = True
        missing = np.flatnonzero(~covered)
        lo = hi = missing[0]
        while hi + 1 < pool_size and not covered[hi + 1]:
            hi += 1
        raise AlselError(f"{paths[0]}: shards leave a gap: pool rows {lo}..{hi} are scored by no file "
                         f"({len(missing)} of {pool_size} rows missing)")
    local = np.concatenate([np.arange(len(x[1])) for x in parts])[order]
    score = np.concatenate([x[3] for x in parts])[order]
    count = np.concatenate([x[4] for x in parts])[order]
    closest = None if any(x[5] is None for x in parts) else np.concatenate([x[5] for x in parts])[order]
    paired = np.concatenate([x[6] for x in parts])[order]
    skipped = np.concatenate([x[2] for x in parts])[order]
    return MergedScores(rows_sorted, score, count, first_attrs, [x[0] for x in parts], owner[order], local,
                        closest, paired, skipped)


def top_b(score: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the B highest scores, highest first, ties broken by the lower index."""
    n = len(score)
    kth = np.partition(score, n - budget)[n - budget]  # the B-th largest value
    above = np.flatnonzero(score > kth)
    ties = np.flatnonzero(score == kth)[: budget - len(above)]
    chosen = np.concatenate([above, ties])
    return chosen[np.lexsort((chosen, -score[chosen].astype(np.float64)))]


def select_by_score(paths: list[str], budget: int, fill: str = "random", seed: int = 0) -> Selection:
    """hn from score files (SPEC §3 "Selection by score"): positive scores first, then the fill."""
    from .strategies import Inputs, scored_pool, select

    return select("hn", Inputs(pool=scored_pool(paths), budget=budget, seed=seed, scores=list(paths)), fill=fill)


# --------------------------------------------------------------------------- baselines


def select_random(pool_store: Store, select: str, budget: int, seed: int) -> Selection:
    """B pool items uniformly at random (the registry's random strategy)."""
    from .strategies import Inputs, select as choose

    return choose("random", Inputs(pool=pool_store, budget=budget, seed=seed), select=select)


class MaxSim:
    """Reducer: the largest similarity per row."""

    def init(self, n, r0):
        return None

    def update(self, state, s, r0, c0):
        m = s.amax(dim=1)
        return m if state is None else torch.maximum(state, m)

    def finish(self, state):
        return (state,)


def distance_from_sim(s: np.ndarray) -> np.ndarray:
    """||u - x|| = sqrt(2 - 2 s) for unit vectors."""
    return np.sqrt(np.maximum(2.0 - 2.0 * s.astype(np.float64), 0.0))


def kcenter_greedy(pool: Rows, centers: np.ndarray, budget: int, device: torch.device,
                   chunk_size: int | None = None, progress: Callable[[int], None] | None = None,
                   transform=None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy: d(u) = min_x ||u - x|| over `centers`; B times take argmax d (ties: lower row)
    and lower d by the distance to the new center. Returns (rows, d at pick time). Memory O(N_u).
    `transform` maps pool rows into the centers' space (a head); `exclude` rows are never taken."""
    (s,) = collect(sweep(pool, to_device(centers, device), MaxSim(), device=device, transform=transform,
                         chunk_size=chunk_size))
    d = distance_from_sim(s)
    chosen = np.zeros(pool.n, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool).copy()
    rows = np.empty(budget, np.int64)
    dist = np.empty(budget, np.float32)
    for b in range(budget):
        d_masked = np.where(chosen, -np.inf, d)
        u = int(np.argmax(d_masked))
        rows[b], dist[b] = u, d_masked[u]
        chosen[u] = True
        new_center = pool.load(u, u + 1).to(device)
        if transform is not None:
            new_center = transform(new_center)
        (s_u,) = collect(sweep(pool, new_center, MaxSim(), device=device, transform=transform,
                               chunk_size=chunk_size))
        d = np.minimum(d, distance_from_sim(s_u))
        if progress is not None:
            progress(1)
    return rows, dist


def select_coreset(pool_store: Store, paired_store: Store, select: str, budget: int, device: torch.device,
                   chunk_size: int | None = None, head=None) -> Selection:
    """Core-set baseline (k-center greedy from the paired items of the selected side)."""
    from .strategies import Inputs, select as choose

    return choose("coreset", Inputs(pool=pool_store, paired=paired_store, budget=budget, head=head, device=device,
                                    chunk_size=chunk_size), select=select)


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
