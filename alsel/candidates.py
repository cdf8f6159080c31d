"""Candidates files (SPEC §10, kind = "candidates"): what one shard of a sharded selection keeps for the
merge. `/row` and `/id` are the shard's candidate pool rows; the other datasets and the attributes are the
statistics the strategy's merge needs (alsel.strategies: `shard_map` writes them, `merge` reads them).

Every shard of one selection shares SHARED_KEYS (the strategy with its options, budget, seed, side, pool,
paired store and head); together the shards cover the pool once: shard i of n holds rows
[i·N/n, (i+1)·N/n), as `alsel score --shard` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from .errors import AlselError
from .h5file import attrs_dict, dataset, int_attr, open_h5, read_ids, write_h5

SHARED_KEYS = ("strategy", "options", "budget", "seed", "select", "pool_size", "pool_fingerprint",
               "paired_fingerprint", "head", "model")


@dataclass
class Shard:
    """One candidates file, read: its path, attributes, shard (i, n) and datasets (numpy arrays)."""

    path: str
    attrs: dict
    index: int
    count: int
    data: dict


def save_candidates(out: str, data: dict, attrs: dict, inputs: tuple = (), created_by: str | None = None) -> None:
    """Write one shard's candidates atomically (ids as UTF-8 strings)."""
    for key in ("row", "id"):
        if key not in data:
            raise AlselError(f"{out}: a candidates file needs /{key}")
    write_h5(out, "candidates", data, attrs, inputs=inputs, created_by=created_by)


def read_candidates(paths: list[str]) -> list[Shard]:
    """Every shard of one sharded selection, checked: one run (SHARED_KEYS agree), every shard i of n once."""
    if not paths:
        raise AlselError("--candidates: give the candidates files of every shard")
    shards = []
    for p in paths:
        with open_h5(p, "candidates") as f:
            attrs = attrs_dict(f)
            for k in SHARED_KEYS + ("shard",):
                if k not in attrs:
                    raise AlselError(f"{p}: attribute {k!r} is missing")
            rows = np.asarray(dataset(f, "/row", p, ndim=1, kind="i")[:], dtype=np.int64)
            data = {"row": rows, "id": read_ids(dataset(f, "/id", p, ndim=1, kind="S", length=len(rows)), p)}
            for name, obj in f.items():
                if name in data or not hasattr(obj, "shape"):
                    continue
                if h5py.check_string_dtype(obj.dtype) is not None:
                    data[name] = read_ids(obj, p)
                    continue
                arr = obj[:]
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise AlselError(f"{p}: /{name} holds NaN or infinite values")
                data[name] = arr
        try:
            i, n = (int(x) for x in str(attrs["shard"]).split("/"))
        except ValueError:
            raise AlselError(f"{p}: attribute 'shard' is {attrs['shard']!r}, expected i/n") from None
        pool_size = int_attr(attrs, "pool_size", p, minimum=1)
        if not 0 <= i < n:
            raise AlselError(f"{p}: shard {i}/{n} is out of range")
        if len(rows) and (rows.min() < i * pool_size // n or rows.max() >= (i + 1) * pool_size // n):
            raise AlselError(f"{p}: candidate rows outside its shard {i}/{n} of {pool_size} pool rows")
        shards.append(Shard(p, attrs, i, n, data))
    first = shards[0]
    for s in shards[1:]:
        for k in SHARED_KEYS:
            if s.attrs[k] != first.attrs[k]:
                raise AlselError(f"{s.path}: {k} = {s.attrs[k]!r} differs from {first.path} ({first.attrs[k]!r}); "
                                 f"the candidates must come from one sharded selection")
        if s.count != first.count:
            raise AlselError(f"{s.path}: shard {s.index}/{s.count}, but {first.path} is of {first.count} shards")
    seen: dict[int, str] = {}
    for s in shards:
        if s.index in seen:
            raise AlselError(f"{s.path}: shard {s.index}/{s.count} is given twice (also {seen[s.index]})")
        seen[s.index] = s.path
    missing = sorted(set(range(first.count)) - set(seen))
    if missing:
        raise AlselError(f"{first.path}: shards {', '.join(f'{i}/{first.count}' for i in missing[:5])} are missing "
                         f"({len(missing)} of {first.count}); every shard's candidates are needed")
    return sorted(shards, key=lambda s: s.index)
