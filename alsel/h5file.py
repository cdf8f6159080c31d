"""The HDF5 files of SPEC §1, whatever their kind: opening and checking (`alsel_format`, `kind`, attributes,
datasets, ids), the root attributes every file carries, and writing a small result file atomically.
Every check raises AlselError with the file's path in the message."""

from __future__ import annotations

import os

import h5py
import numpy as np

from .errors import AlselError
from .output import _short, atomic_path, command_line

FORMAT = 1


KINDS = ("store", "thresholds", "scores", "selection", "candidates")


STR_DTYPE = h5py.string_dtype("utf-8")


def _version() -> str:
    from . import __version__

    return __version__


def open_h5(path: str | os.PathLike, kind: str | tuple[str, ...]) -> h5py.File:
    """Open an alsel file read-only and check `alsel_format` and `kind`."""
    path = os.fspath(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AlselError(f"{path}: is a directory, expected an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise AlselError(lock_failure(path, e) or f"{path}: not an HDF5 file or unreadable ({_short(e)})") from None
    try:
        fmt = f.attrs.get("alsel_format")
        if fmt is None:
            raise AlselError(f"{path}: not an alsel file (no alsel_format attribute)")
        v = _scalar(fmt)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v != FORMAT:
            raise AlselError(f"{path}: alsel_format {fmt!r} is not supported (expected {FORMAT})")
        got = _str_attr(f, "kind", path)
        if got not in kinds:
            want = " or ".join(repr(k) for k in kinds)
            raise AlselError(f"{path}: kind is {got!r}, expected {want}")
    except Exception:
        f.close()
        raise
    return f


def lock_failure(path: str, e: OSError) -> str | None:
    """HDF5 (>= 1.10) locks files it opens; the two ways that fails, in words. alsel's own outputs are
    written under private temporary names with locking off, so only reading an input can hit this."""
    text = str(e)
    if "unable to lock file" not in text and "lock" not in text.lower():
        return None
    if "errno = 11" in text or "Resource temporarily unavailable" in text:
        return (f"{path}: another process has this file open for writing (HDF5 file lock); wait for it to "
                f"finish, or set HDF5_USE_FILE_LOCKING=FALSE if you know nothing writes it")
    return (f"{path}: this file system does not support HDF5 file locking ({_short(e)}); set "
            f"HDF5_USE_FILE_LOCKING=FALSE (usual on NFS and some Lustre mounts)")


def _scalar(v):
    a = np.asarray(v)
    return a.item() if a.size == 1 else v


def _str_attr(f: h5py.File, name: str, path: str, default: str | None = None) -> str:
    if name not in f.attrs:
        if default is not None:
            return default
        raise AlselError(f"{path}: attribute {name!r} is missing")
    v = _scalar(f.attrs[name])
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise AlselError(f"{path}: attribute {name!r} should be a string, found {type(v).__name__}")
    return v


def attrs_dict(f: h5py.File) -> dict:
    """Root attributes as Python values; text that is not valid UTF-8 is bad input (it would be copied
    into outputs and printed)."""
    out = {}
    for k, v in f.attrs.items():
        v = _scalar(v)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, str) and not _is_utf8(v):
            raise AlselError(f"{f.filename}: attribute {k!r} is not valid UTF-8 text")
        out[k] = v
    return out


def int_attr(attrs: dict, key: str, path: str, minimum: int | None = None) -> int:
    """An integer attribute, checked (bad input otherwise)."""
    v = attrs.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or (minimum is not None and v < minimum):
        floor = f" >= {minimum}" if minimum is not None else ""
        raise AlselError(f"{path}: attribute {key!r} is {v!r}, expected an integer{floor}")
    return int(v)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dataset(f: h5py.File, name: str, path: str, *, ndim: int | None = None, kind: str | None = None,
            length: int | None = None) -> h5py.Dataset:
    """Fetch a dataset and check its rank, dtype kind ('f' float, 'i' integer, 'S' string) and length."""
    obj = f.get(name)
    if obj is None:
        raise AlselError(f"{path}: dataset {name} is missing")
    if not isinstance(obj, h5py.Dataset):
        raise AlselError(f"{path}: {name} is not a dataset")
    if ndim is not None and obj.ndim != ndim:
        raise AlselError(f"{path}: {name} has {obj.ndim} dimensions, expected {ndim} (shape {obj.shape})")
    if kind is not None:
        dk = obj.dtype.kind
        ok = {"f": dk == "f", "i": dk in "iu", "S": h5py.check_string_dtype(obj.dtype) is not None}[kind]
        if not ok:
            what = {"f": "floating point", "i": "integer", "S": "string"}[kind]
            raise AlselError(f"{path}: {name} has dtype {obj.dtype}, expected {what}")
    if length is not None and obj.shape[0] != length:
        raise AlselError(f"{path}: {name} has {obj.shape[0]} rows, expected {length}")
    return obj


def read_ids(ds: h5py.Dataset, path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Ids as a numpy array of Python str (object dtype)."""
    return _decoded(ds[start:stop], ds, path)


def _decoded(raw: np.ndarray, ds: h5py.Dataset, path: str) -> np.ndarray:
    """Ids read from `ds` as Python str, each checked to be valid UTF-8 text."""
    out = np.empty(len(raw), dtype=object)
    try:
        try:  # h5py gives bytes (vlen or fixed-length strings): a successful UTF-8 decode is valid text
            out[:] = [x.decode("utf-8") for x in raw]
            return out
        except AttributeError:  # values given as str (no decode): those need the encode check
            out[:] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]
        if all(_is_utf8(x) for x in out):
            return out
    except UnicodeDecodeError:
        pass
    raise AlselError(f"{path}: {ds.name} holds ids that are not valid UTF-8 text")


def read_id_bytes(ds: h5py.Dataset, path: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Ids as their UTF-8 bytes (object array), checked as read_ids checks them but without a str per id:
    the ids joined by NUL decode in one call exactly when every id decodes (a NUL, which no HDF5 string
    holds, ends no multi-byte sequence and continues none). Values given as str are checked as read_ids checks them."""
    raw = ds[start:stop]
    try:
        joined = b"\x00".join(raw)
    except TypeError:  # str values: checked one by one, then encoded
        return np.array([x.encode("utf-8") for x in _decoded(raw, ds, path)], dtype=object)
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        raise AlselError(f"{path}: {ds.name} holds ids that are not valid UTF-8 text") from None
    out = np.empty(len(raw), dtype=object)
    out[:] = [bytes(x) for x in raw] if raw.dtype.kind == "S" else raw
    return out


ID_CHUNK = 1 << 16  # rows per read: larger variable-length reads left h5py holding ~100 MiB each


def id_hashes(raw: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each id's bytes (Python's: salted per process, which only changes which distinct ids
    collide and are then compared, never the answer; bytes keep it, so a later set lookup reuses it)."""
    return np.fromiter(map(hash, raw), dtype=np.int64, count=len(raw)).view(np.uint64)


def scan_ids(ds: h5py.Dataset, path: str, name: str, start: int = 0, stop: int | None = None,
             known: set | None = None, keep: bool = False, unique: bool = True):
    """One read of a side's ids, in ID_CHUNK blocks, for what a command needs of them: every id valid UTF-8
    and (unique) none twice in the whole dataset, in bounded memory (8 bytes of hash per row, sorted; ids
    compared only where hashes meet); for rows [start, stop) which ids are in `known` (UTF-8 bytes: the
    already paired) and, with keep, the ids as UTF-8 bytes. Returns (mask or None, ids or None)."""
    n = len(ds)
    stop = n if stop is None else stop
    lo, hi = (0, n) if unique else (start, stop)
    hashes = np.empty(n, dtype=np.uint64) if unique else None
    mask = np.zeros(stop - start, dtype=bool) if known is not None else None
    kept = np.empty(stop - start, dtype=object) if keep else None
    for a in range(lo, hi, ID_CHUNK):
        b = min(hi, a + ID_CHUNK)
        raw = read_id_bytes(ds, path, a, b)
        if hashes is not None:
            hashes[a:b] = id_hashes(raw)
        s, e = max(a, start), min(b, stop)
        if s < e:
            part = raw[s - a:e - a]
            if mask is not None and known:
                mask[s - start:e - start] = np.fromiter(map(known.__contains__, part), dtype=bool, count=e - s)
            if kept is not None:
                kept[s - start:e - start] = part
    if hashes is not None:
        _refuse_duplicates(ds, path, name, hashes)
    return mask, kept


def _refuse_duplicates(ds: h5py.Dataset, path: str, name: str, hashes: np.ndarray) -> None:
    """The first row (in row order) whose id an earlier row has is bad input; only rows whose hashes meet
    another's are read again and compared."""
    ordered = np.sort(hashes)  # a sort of the values, not an argsort: 10x faster at 10^7 rows
    met = ordered[1:][ordered[1:] == ordered[:-1]]
    del ordered
    if len(met) == 0:
        return
    rows = np.flatnonzero(np.isin(hashes, met))
    seen: dict[str, int] = {}
    for r in rows:  # few rows: hash collisions or true duplicates
        x = read_ids(ds, path, int(r), int(r) + 1)[0]
        j = seen.setdefault(x, int(r))
        if j != r:
            raise AlselError(f"{path}: duplicate id {x!r} in {name} (rows {j} and {r})")


def check_unique_streamed(ds: h5py.Dataset, path: str, name: str) -> None:
    """Unique, valid ids in bounded memory (scan_ids without the rest)."""
    scan_ids(ds, path, name, 0, 0)


def read_ids_at(ds: h5py.Dataset, path: str, rows: np.ndarray) -> np.ndarray:
    """Ids of `rows` (any order, repeats allowed), reading only near those rows."""
    if len(rows) == 0:
        return np.array([], dtype=object)
    uniq, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    return _read_increasing(ds, uniq)[inverse]


def _read_increasing(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Ids of strictly increasing rows, in blocks of row ranges (h5py point selection is slow)."""
    out = np.empty(len(rows), dtype=object)
    for a in range(0, len(rows), 4096):
        part = rows[a:a + 4096]
        if part[-1] - part[0] < 65536:  # close together: one range read
            raw = ds[int(part[0]):int(part[-1]) + 1][part - part[0]]
        else:
            raw = ds[part]
        out[a:a + len(part)] = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]
    return out


def check_labels(labels: np.ndarray, path: str, name: str, n: int) -> np.ndarray:
    """Multi-hot labels: (n, C) with C >= 1 and every value 0 or 1; returned as uint8."""
    if labels.ndim != 2 or labels.shape[0] != n or labels.shape[1] < 1:
        raise AlselError(f"{path}: {name} must have shape ({n}, C) with C >= 1, got {labels.shape}")
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        raise AlselError(f"{path}: {name} must be multi-hot (only 0 and 1)")
    return labels.astype(np.uint8)


def check_unique(ids: np.ndarray, path: str, name: str) -> None:
    """Duplicate ids are bad input: one line naming the first repeated id and its rows."""
    if len(ids) == 0:
        return
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        j = seen.setdefault(x, i)
        if j != i:
            raise AlselError(f"{path}: duplicate id {x!r} in {name} (rows {j} and {i})")


def set_root_attrs(f: h5py.File, kind: str, attrs: dict | None = None, created_by: str | None = None) -> None:
    """The root attributes every alsel file carries (format, kind, version, created_by) plus `attrs`."""
    f.attrs["alsel_format"] = FORMAT
    f.attrs["kind"] = kind
    f.attrs["alsel_version"] = _version()
    f.attrs["created_by"] = created_by if created_by is not None else command_line()
    for k, v in (attrs or {}).items():
        f.attrs[k] = v


def write_h5(out: str | os.PathLike, kind: str, datasets: dict, attrs: dict | None = None,
             inputs: tuple = (), created_by: str | None = None) -> None:
    """Write a small result file (thresholds, scores, selection) atomically. Strings as UTF-8."""
    with atomic_path(out, inputs) as tmp:
        with h5py.File(tmp, "w", locking=False) as f:
            set_root_attrs(f, kind, attrs, created_by)
            for name, arr in datasets.items():
                arr = np.asarray(arr)
                if arr.dtype == object or arr.dtype.kind == "U":
                    f.create_dataset(name, data=np.asarray(arr, dtype=object), dtype=STR_DTYPE)
                else:
                    f.create_dataset(name, data=arr)
