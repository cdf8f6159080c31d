"""hn's score files (SPEC §1, kind = "scores"): the shards of one scoring run merged and checked (every pool
row exactly once, one run's settings), and the top-B of a score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AlselError
from ..h5file import attrs_dict, dataset, int_attr, open_h5, read_ids_at

# attributes every shard of one scoring run shares
SHARD_KEYS = ("weight", "select", "top_k", "batch", "batch_size", "margin", "form", "seed", "pool_size",
              "pool_fingerprint", "paired_fingerprint", "thresholds_fingerprint", "head")


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
