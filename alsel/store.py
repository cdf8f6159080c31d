"""Embedding stores (SPEC §1): rows opened without loading them (memory-mapped where contiguous) and
checked as they are read (finite, unit length within 1e-2, re-normalised in float32, so a pool is checked in
the same single pass that scores it), the paired side in memory, fingerprints, and writing stores in slices.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ._lazy import torch  # imported on first use (fast start)
from .errors import AlselError
from .h5file import (STR_DTYPE, attrs_dict, check_labels, check_unique, check_unique_streamed, dataset, open_h5,
                     read_ids, read_ids_at, scan_ids, set_root_attrs)
from .output import atomic_path, check_space

NORM_TOLERANCE = 1e-2


EMB_DTYPES = (np.dtype("float16"), np.dtype("float32"))


class Embeddings:
    """One modality's (N, D) rows of a store, opened without loading them.

    A contiguous uncompressed dataset is memory-mapped; pages of a range are released with
    `release()` once the range is processed, so resident memory stays bounded by the chunk.
    Other layouts are read in slices through h5py.
    """

    def __init__(self, f: h5py.File, group: str, path: str):
        self.path = path
        self.name = f"/{group}/emb"
        ds = dataset(f, self.name, path, ndim=2, kind="f")
        if ds.dtype not in EMB_DTYPES:
            raise AlselError(f"{path}: {self.name} has dtype {ds.dtype}, expected float16 or float32")
        self.n, self.d = (int(x) for x in ds.shape)
        if self.d == 0:
            raise AlselError(f"{path}: {self.name} has zero-length rows (D = 0)")
        self.dtype = ds.dtype
        self._ds = ds
        self._mm = None
        self._base = 0
        self._array = None
        offset = ds.id.get_offset()
        on_disk = f.driver != "core"  # an in-memory file (alsel.arrays) has no file to map
        if on_disk and ds.chunks is None and ds.compression is None and offset is not None and self.n > 0:
            gran = mmap.ALLOCATIONGRANULARITY
            base = offset - offset % gran
            nbytes = self.n * self.d * self.dtype.itemsize
            with open(path, "rb") as fh:
                # copy-on-write mapping: writable views for torch, and the file can never change
                self._mm = mmap.mmap(fh.fileno(), nbytes + offset - base, access=mmap.ACCESS_COPY, offset=base)
            self._base = offset - base
            self._array = np.frombuffer(self._mm, dtype=self.dtype, count=self.n * self.d,
                                        offset=self._base).reshape(self.n, self.d)

    @property
    def memory_mapped(self) -> bool:
        return self._array is not None

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Rows as stored (float16 or float32), no checks."""
        if self._array is not None:
            return self._array[start:stop]
        return self._ds[start:stop]

    def load(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows [start, stop) as float32 unit rows (SPEC §3), checked, in `out[:n]` when given.

        The conversion from float16 is a torch copy into a reused buffer: fresh allocations and
        numpy's half-precision casts cost more than the copy itself on these machines.
        """
        n = stop - start
        out = torch.empty((n, self.d), dtype=torch.float32) if out is None else out[:n]  # cpu: rows read from the file
        out.copy_(torch.from_numpy(np.asarray(self.raw(start, stop))))
        return normalize_(out, self.path, self.name, start)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as a new float32 numpy array, checked and re-normalised."""
        return self.load(start, self.n if stop is None else stop).numpy()

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (sorted ascending, e.g. a seeded sample) as float32 unit rows, checked."""
        rows = np.asarray(rows, dtype=np.int64)
        raw = self._array[rows] if self._array is not None else self._ds[rows] if len(rows) else \
            np.zeros((0, self.d), self.dtype)
        out = torch.from_numpy(np.asarray(raw, dtype=np.float32))
        if len(rows):  # the rows are copied: drop the mapped pages the scattered reads touched
            self.release(int(rows[0]), int(rows[-1]) + 1)
        try:
            normalize_(out, self.path, self.name, 0)
        except AlselError:  # name the store's row, not the sample's
            for i in range(len(rows)):
                normalize_(out[i:i + 1].clone(), self.path, self.name, int(rows[i]))
            raise
        return out.numpy()

    def release(self, start: int, stop: int) -> None:
        """Drop the mapped pages of rows [start, stop) from this process's resident set."""
        if self._mm is None or stop <= start:
            return
        row = self.d * self.dtype.itemsize
        lo = self._base + start * row
        hi = self._base + stop * row
        page = mmap.PAGESIZE
        lo = -(-lo // page) * page  # only whole pages inside the range
        hi = hi // page * page
        if hi > lo:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        """Unmap the rows (views still alive keep the mapping until they go)."""
        self._array = None
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # arrays from raw() still alive: unmapped when they go
                self._mm.close()
            self._mm = None


def normalize_(x: torch.Tensor, path: str, name: str, start: int = 0) -> torch.Tensor:
    """Check float32 rows are finite and unit length within NORM_TOLERANCE; re-normalise in place."""
    norms = torch.linalg.vector_norm(x, dim=1)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        r = int(bad.nonzero()[0, 0])
        raise AlselError(f"{path}: row {start + r} of {name} has NaN or infinite values")
    off = (norms - 1.0).abs() > NORM_TOLERANCE
    if bool(off.any()):
        r = int(off.nonzero()[0, 0])
        raise AlselError(f"{path}: row {start + r} of {name} is not unit length (norm {float(norms[r]):.4g}); "
                         f"embeddings must be L2-normalised")
    return x.div_(norms[:, None])


def normalize_rows(x: np.ndarray, path: str, name: str, start: int = 0) -> np.ndarray:
    """normalize_ for a writable float32 numpy array (in place)."""
    normalize_(torch.from_numpy(x), path, name, start)
    return x


@dataclass
class IdScan:
    """What one read of a pool side's ids gives (Store.scan_ids): for the rows asked, whether each is
    already paired (None: no paired ids given) and the ids as UTF-8 bytes (None: not kept)."""

    paired: np.ndarray | None
    ids: np.ndarray | None


@dataclass
class Store:
    """An opened embedding store (kind = "store")."""

    path: str
    file: h5py.File
    attrs: dict
    images: Embeddings | None = None
    texts: Embeddings | None = None
    text_image: np.ndarray | None = None  # int64 (N_t,), -1 = unpaired
    _ids: dict = field(default_factory=dict)
    _checked: set = field(default_factory=set)  # sides whose ids were scanned: valid and unique

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", ""))

    @property
    def d(self) -> int:
        return (self.images or self.texts).d

    @property
    def is_paired(self) -> bool:
        return self.images is not None and self.texts is not None and self.text_image is not None \
            and self.texts.n > 0 and bool((self.text_image >= 0).all())

    def ids(self, group: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Ids of rows [start, stop); a slice is read on its own (a shard of a huge pool), the whole
        list is read once, checked for duplicates and cached."""
        if (start, stop) != (0, None) and group not in self._ids:
            ds = dataset(self.file, f"/{group}/id", self.path, ndim=1, kind="S", length=getattr(self, group).n)
            return read_ids(ds, self.path, start, stop)
        if group not in self._ids:
            ds = dataset(self.file, f"/{group}/id", self.path, ndim=1, kind="S",
                         length=getattr(self, group).n)
            ids = read_ids(ds, self.path)
            check_unique(ids, self.path, f"/{group}/id")
            self._ids[group] = ids
        return self._ids[group][start:stop]

    def scan_ids(self, group: str, start: int = 0, stop: int | None = None, known: set | None = None,
                 keep: bool = False) -> IdScan:
        """One read of the side's ids (h5file.scan_ids): checked once per store (valid, unique), and for rows
        [start, stop) the already-paired mask (ids in `known`, UTF-8 bytes) and, with keep, the ids as bytes."""
        n = getattr(self, group).n
        stop = n if stop is None else stop
        if group in self._ids:  # read and checked already (a paired store): from memory
            ids = np.array([x.encode("utf-8") for x in self._ids[group][start:stop].tolist()], dtype=object)
            mask = np.fromiter(map((known or set()).__contains__, ids), dtype=bool, count=len(ids))
            return IdScan(mask if known is not None else None, ids if keep else None)
        ds = dataset(self.file, f"/{group}/id", self.path, ndim=1, kind="S", length=n)
        mask, ids = scan_ids(ds, self.path, f"/{group}/id", start, stop, known, keep,
                             unique=group not in self._checked)
        self._checked.add(group)
        return IdScan(mask, ids)

    def labels(self, group: str) -> np.ndarray | None:
        """/{group}/labels as uint8 (N, C), or None when the store has none (checked: multi-hot)."""
        emb = getattr(self, group)
        if emb is None or "labels" not in self.file[group]:
            return None
        ds = dataset(self.file, f"/{group}/labels", self.path, ndim=2, length=emb.n)
        return check_labels(ds[:], self.path, f"/{group}/labels", emb.n)

    @property
    def has_text(self) -> bool:
        """Whether the store holds caption strings (/texts/text)."""
        return self.texts is not None and "text" in self.file["texts"]

    def text_strings(self, rows: np.ndarray | None = None) -> np.ndarray | None:
        """/texts/text (the caption strings, SPEC §8) of `rows` (all when None) as Python str, or None
        when the store holds no text (made from bare arrays)."""
        if not self.has_text:
            return None
        ds = dataset(self.file, "/texts/text", self.path, ndim=1, kind="S", length=self.texts.n)
        if rows is None:
            return read_ids(ds, self.path)
        return read_ids_at(ds, self.path, np.asarray(rows, dtype=np.int64))

    def flags(self, group: str, name: str) -> np.ndarray:
        """A per-row 0/1 dataset of a group (e.g. /images/skipped) as bool; all False when absent."""
        emb = getattr(self, group)
        if emb is None or name not in self.file[group]:
            return np.zeros(0 if emb is None else emb.n, dtype=bool)
        ds = dataset(self.file, f"/{group}/{name}", self.path, ndim=1, kind="i", length=emb.n)
        values = np.asarray(ds[:])
        if not np.isin(values, (0, 1)).all():
            raise AlselError(f"{self.path}: /{group}/{name} holds values other than 0 and 1")
        return values.astype(bool)

    def ids_at(self, group: str, rows: np.ndarray) -> np.ndarray:
        """Ids of the given rows (any order), reading only those rows."""
        if group in self._ids:
            return self.ids(group)[rows]
        ds = dataset(self.file, f"/{group}/id", self.path, ndim=1, kind="S", length=getattr(self, group).n)
        return read_ids_at(ds, self.path, rows)

    def check_ids(self, group: str) -> None:
        """Ids that are not valid UTF-8 or repeat are bad input; checked in bounded memory, once."""
        if group not in self._ids and group not in self._checked:
            self.scan_ids(group, 0, 0)

    def fingerprint(self, group: str) -> str:
        """The pool fingerprint of one side (what selections and scores record)."""
        return pool_fingerprint(self.side(group), self.model)

    def side(self, group: str) -> Embeddings:
        """The embeddings of one side ('images' or 'texts'); a missing side is a one-line error."""
        emb = getattr(self, group)
        if emb is None:
            other = "texts" if group == "images" else "images"
            hint = f" (it holds {other}: use --select {other}?)" if getattr(self, other) is not None else ""
            raise AlselError(f"{self.path}: has no /{group} group{hint}")
        return emb

    def close(self) -> None:
        """Close the rows and the file."""
        for e in (self.images, self.texts):
            if e is not None:
                e.close()
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(path: str | os.PathLike, need: str | None = None, check_ids: bool = True) -> Store:
    """Open an embedding store. `need`: "paired", "images" or "texts" (pool side), or None.

    Checks structure, shapes, dtypes, text→image range and id uniqueness up front; embedding
    values are checked as rows are read (Embeddings.read).
    """
    path = os.fspath(path)
    return open_store_file(open_h5(path, "store"), path, need, check_ids)


def open_store_file(f: h5py.File, path: str, need: str | None = None, check_ids: bool = True) -> Store:
    """open_store on an h5py file already open (e.g. an in-memory one, alsel.arrays); closed on failure."""
    try:
        attrs = attrs_dict(f)
        if "model" not in attrs:
            raise AlselError(f"{path}: attribute 'model' is missing")
        st = Store(path=path, file=f, attrs=attrs)
        if "images" in f:
            st.images = Embeddings(f, "images", path)
        if "texts" in f:
            st.texts = Embeddings(f, "texts", path)
            if "texts/image" in f:
                ds = dataset(f, "/texts/image", path, ndim=1, kind="i", length=st.texts.n)
                st.text_image = np.asarray(ds[:], dtype=np.int64)
        if st.images is None and st.texts is None:
            raise AlselError(f"{path}: has neither /images nor /texts")
        if st.images is not None and st.texts is not None and st.images.d != st.texts.d:
            raise AlselError(f"{path}: /images/emb has D = {st.images.d} but /texts/emb has D = {st.texts.d}")
        if st.text_image is not None:
            ti = st.text_image
            n_i = st.images.n if st.images is not None else 0
            bad = (ti < -1) | (ti >= n_i)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise AlselError(f"{path}: /texts/image[{r}] = {ti[r]} is out of range "
                                 f"(the store has {n_i} images; -1 means unpaired)")
        if need == "paired":
            if st.images is None or st.texts is None:
                raise AlselError(f"{path}: not a paired store (needs both /images and /texts)")
            if st.text_image is None:
                raise AlselError(f"{path}: dataset /texts/image is missing")
            if st.texts.n == 0 or st.images.n == 0:
                raise AlselError(f"{path}: paired store is empty")
            if (st.text_image < 0).any():
                r = int(np.flatnonzero(st.text_image < 0)[0])
                raise AlselError(f"{path}: not a paired store: text {r} has no image (/texts/image = -1)")
            st.ids("images")
            st.ids("texts")
        elif need in ("images", "texts"):
            emb = st.side(need)
            if emb.n == 0:
                raise AlselError(f"{path}: the pool is empty (/{need}/emb has 0 rows)")
            if check_ids:  # else the caller's own read of the ids checks them (Store.scan_ids) before its work
                st.check_ids(need)
        return st
    except BaseException:
        f.close()
        raise


def check_compatible(a: Store, b: Store) -> None:
    """Two stores used together must share D and the model attribute."""
    if a.d != b.d:
        raise AlselError(f"{b.path}: embedding dimension D = {b.d} does not match {a.path} (D = {a.d})")
    if a.model != b.model:
        raise AlselError(f"{b.path}: model {b.model!r} does not match {a.path} (model {a.model!r})")


@dataclass
class Paired:
    """A paired store loaded into memory (float32, unit rows): the resident side of every sweep."""

    path: str
    images: np.ndarray
    texts: np.ndarray
    text_image: np.ndarray
    model: str
    fingerprint: str
    head: str = "none"  # fingerprint of the retrieval head the rows went through, if any
    ids: dict | None = None  # {"images": ids, "texts": ids}: pool items with these ids are already paired

    def id_set(self, group: str) -> set | None:
        """This paired set's ids of `group` as UTF-8 bytes (what Store.scan_ids compares pool ids with)."""
        return None if self.ids is None else utf8_set(self.ids[group])


def utf8_set(ids: np.ndarray) -> set:
    """Ids (str) as a set of their UTF-8 bytes: the paired ids a pool's ids are looked up in."""
    return {x.encode("utf-8") for x in ids.tolist()}


def load_paired(store: Store) -> Paired:
    """The paired store's rows in memory (float32 unit rows) with its ids and fingerprint."""
    if not store.is_paired:
        raise AlselError(f"{store.path}: not a paired store")
    images = store.images.read()
    texts = store.texts.read()
    return Paired(store.path, images, texts, store.text_image.copy(), store.model,
                  paired_fingerprint(store), ids={"images": store.ids("images"), "texts": store.ids("texts")})


def paired_fingerprint(store: Store) -> str:
    """Shapes plus a SHA-256 of the stored embeddings and the text→image index."""
    h = hashlib.sha256()
    for emb in (store.images, store.texts):
        h.update(f"{emb.n}x{emb.d}:{emb.dtype.str};".encode())
        for s in range(0, emb.n, 65536):
            h.update(np.ascontiguousarray(emb.raw(s, min(emb.n, s + 65536))).tobytes())
    h.update(np.ascontiguousarray(store.text_image, dtype="<i8").tobytes())
    return h.hexdigest()[:32]


def pool_fingerprint(emb: Embeddings, model: str) -> str:
    """Shape, dtype, model and 64 evenly spaced rows (first and last included): cheap for any pool
    size, and enough to tell shards of different pools apart."""
    h = hashlib.sha256(f"{emb.n}x{emb.d}:{emb.dtype.str}:{model};".encode())
    if emb.n:
        for r in np.unique(np.linspace(0, emb.n - 1, num=min(64, emb.n)).astype(np.int64)):
            h.update(np.ascontiguousarray(emb.raw(int(r), int(r) + 1)).tobytes())
    return h.hexdigest()[:32]


def write_store(out: str | os.PathLike, *, images: np.ndarray | None = None, image_ids=None,
                texts: np.ndarray | None = None, text_ids=None, text_image: np.ndarray | None = None,
                image_labels: np.ndarray | None = None, text_labels: np.ndarray | None = None,
                text_strings=None, model: str, pretrained: str, dtype: str | np.dtype | None = None,
                extra: dict | None = None, inputs: tuple = (), created_by: str | None = None) -> None:
    """Write an embedding store atomically from in-memory arrays (rows must already be unit length).

    For inputs larger than memory use StoreWriter directly.
    """
    with StoreWriter(out, model=model, pretrained=pretrained, inputs=inputs, created_by=created_by) as w:
        if images is not None:
            w.add_group("images", len(images), images.shape[1], dtype or images.dtype)
            w.write("images", 0, images, image_ids)
        if texts is not None:
            w.add_group("texts", len(texts), texts.shape[1], dtype or texts.dtype,
                        text_image=text_image if text_image is not None else np.full(len(texts), -1))
            w.write("texts", 0, texts, text_ids)
            if text_strings is not None:
                w.add_text(text_strings)
        for group, labels in (("images", image_labels), ("texts", text_labels)):
            if labels is not None:
                w.add_labels(group, labels)
        for name, arr in (extra or {}).items():
            w.put(name, arr)


CARRIED_ATTRS = ("image_root", "model_config", "embed_seed", "embed_precision")  # what `embed` records


def carried_attrs(store: "Store") -> dict:
    """The attributes a store derived from `store` keeps (merge's outputs): where its images are and
    how its embeddings were made."""
    return {k: store.attrs[k] for k in CARRIED_ATTRS if k in store.attrs}


class StoreWriter:
    """Streams rows into a new store: datasets are allocated contiguous up front, rows written in
    slices, every row checked (finite, unit length), ids checked unique on close; renamed into place
    only when complete."""

    def __init__(self, out, *, model: str, pretrained: str, inputs: tuple = (), created_by: str | None = None,
                 attrs: dict | None = None):
        self.out = os.fspath(out)
        self._ctx = atomic_path(self.out, inputs)
        self._attrs = {"model": model, "pretrained": pretrained, **(attrs or {})}
        self._created_by = created_by
        self.f: h5py.File | None = None

    def __enter__(self):
        self.tmp = self._ctx.__enter__()
        self.f = h5py.File(self.tmp, "w", locking=False)
        set_root_attrs(self.f, "store", self._attrs, self._created_by)
        return self

    def add_group(self, group: str, n: int, d: int, dtype, text_image=None) -> None:
        """Allocate /{group}/emb (n, d) contiguous and /{group}/id; texts also get /texts/image."""
        dtype = np.dtype(dtype)
        if dtype not in EMB_DTYPES:
            raise AlselError(f"{self.out}: embeddings must be stored as float16 or float32, not {dtype}")
        if d < 1:
            raise AlselError(f"{self.out}: embeddings have zero length (D = 0)")
        check_space(self.out, n * d * dtype.itemsize + n * 16)
        g = self.f.create_group(group)
        g.create_dataset("emb", shape=(n, d), dtype=dtype)  # contiguous, uncompressed: memory-mappable
        g.create_dataset("id", shape=(n,), dtype=STR_DTYPE)
        if text_image is not None:
            g.create_dataset("image", data=np.asarray(text_image, dtype=np.int64))

    def write(self, group: str, start: int, rows: np.ndarray, ids) -> None:
        """Rows [start, start + len) of a group with their ids; every row checked (finite, unit length)."""
        g = self.f[group]
        rows = np.asarray(rows)
        if len(rows):
            normalize_rows(np.array(rows, dtype=np.float32), self.out, f"/{group}/emb", start)
        g["emb"][start:start + len(rows)] = rows.astype(g["emb"].dtype, copy=False)
        if ids is None:
            raise AlselError(f"{self.out}: ids for /{group} are missing")
        ids = [str(x) for x in ids]
        if len(ids) != len(rows):
            raise AlselError(f"{self.out}: {len(ids)} ids for {len(rows)} rows of /{group}")
        g["id"][start:start + len(rows)] = np.asarray(ids, dtype=object)

    def add_labels(self, group: str, labels) -> None:
        """Optional multi-hot class labels (SPEC §1): uint8 (N, C) of 0/1."""
        labels = check_labels(np.asarray(labels), self.out, f"/{group}/labels", self.f[group]["emb"].shape[0])
        self.f[group].create_dataset("labels", data=labels)

    def add_text(self, strings) -> None:
        """The caption strings of /texts (SPEC §8): one UTF-8 string per text row."""
        n = self.f["texts"]["emb"].shape[0]
        strings = ["" if x is None else str(x) for x in strings]
        if len(strings) != n:
            raise AlselError(f"{self.out}: {len(strings)} caption strings for {n} texts")
        self.f["texts"].create_dataset("text", data=np.asarray(strings, dtype=object), dtype=STR_DTYPE)

    def add_flags(self, group: str, name: str, flags) -> None:
        """A per-row 0/1 uint8 dataset of a group (e.g. /images/skipped), written only when a flag is set."""
        flags = np.asarray(flags, dtype=bool)
        if flags.any():
            self.f[group].create_dataset(name, data=flags.astype(np.uint8))

    def put(self, name: str, arr) -> None:
        """Any extra dataset (strings stored as UTF-8)."""
        arr = np.asarray(arr)
        if arr.dtype == object or arr.dtype.kind == "U":
            self.f.create_dataset(name, data=np.asarray(arr, dtype=object), dtype=STR_DTYPE)
        else:
            self.f.create_dataset(name, data=arr)

    def _finish(self) -> None:
        f = self.f
        for group in ("images", "texts"):
            if group in f:
                check_unique_streamed(f[group]["id"], self.out, f"/{group}/id")
        if "texts" in f and "image" in f["texts"]:
            ti = f["texts/image"][:]
            n_i = f["images/emb"].shape[0] if "images" in f else 0
            bad = (ti < -1) | (ti >= n_i)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise AlselError(f"{self.out}: text {r} names image {ti[r]}, out of range (0..{n_i - 1})")

    def __exit__(self, et, ev, tb):
        closed = False
        try:
            if et is None:
                self._finish()
            closed = True  # a failed close must not be retried: HDF5 crashes on a second one
            self.f.close()  # flushes: a full disk can fail here
        except BaseException as e:
            if not closed:
                with contextlib.suppress(Exception):
                    self.f.close()
            self._ctx.__exit__(type(e), e, e.__traceback__)
            raise
        return self._ctx.__exit__(et, ev, tb)
