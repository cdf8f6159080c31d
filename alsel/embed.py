"""`alsel embed`: open_clip embeddings of images and captions into a store, resumable.

Work goes into `OUT.partial` (an HDF5 file with resizable datasets, flushed after every batch, with
a counter of inputs done per modality), so memory does not grow with the number of images and an
interrupted run continues from its last written batch with `--resume`. Batches are the same
consecutive slices of the input list in both cases, so a resumed run gives the same embeddings as
an uninterrupted one. When all inputs are done, the partial file is copied in slices into the final
store (contiguous datasets, SPEC §1) and removed.

Unreadable images are skipped and listed in `/images/failed` (`/images/failed_reason` says why);
captions naming an image that is not in the input list or failed to load are left out of the store
and listed in `/texts/dropped`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AlselError
from .store import STR_DTYPE, StoreWriter, check_output, check_space, open_partial, output_lock, read_ids

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PATH_COLUMNS = ("path", "image_path", "filepath", "file")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COPY_ROWS = 65536


# --------------------------------------------------------------------------- inputs


@dataclass
class ImageList:
    paths: list[str]
    ids: list[str]


def list_images(source: str, path_column: str | None = None) -> ImageList:
    """Images from a folder (recursive), a text file of paths, or a CSV/Parquet with a path column."""
    if not os.path.exists(source):
        raise AlselError(f"{source}: no such file or folder")
    if os.path.isdir(source):
        paths, ids = [], []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    p = os.path.join(root, name)
                    paths.append(p)
                    ids.append(os.path.relpath(p, source).replace(os.sep, "/"))
        if not paths:
            raise AlselError(f"{source}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return ImageList(paths, ids)
    base = os.path.dirname(os.path.abspath(source))
    lower = source.lower()
    if lower.endswith((".csv", ".parquet")):
        table = _read_table(source)
        col = path_column or next((c for c in PATH_COLUMNS if c in table), None)
        if col is None or col not in table:
            raise AlselError(f"{source}: no path column (expected one of {', '.join(PATH_COLUMNS)}, or --path-column)")
        given = [str(x) for x in table[col]]
        ids = [str(x) for x in table["id"]] if "id" in table else given
    else:
        with open(source, encoding="utf-8") as fh:
            given = [line.strip() for line in fh if line.strip()]
        ids = given
    if not given:
        raise AlselError(f"{source}: no images listed")
    paths = [g if os.path.isabs(g) else os.path.join(base, g) for g in given]
    return ImageList(paths, ids)


def _read_table(path: str) -> dict[str, list]:
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types
            raise AlselError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
        return {c: t.column(c).to_pylist() for c in t.column_names}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as e:
        raise AlselError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        return {}
    return {k: [r[k] for r in rows] for k in rows[0] if k is not None}


@dataclass
class Captions:
    ids: list[str]
    texts: list[str]
    images: list[str] | None  # image id per caption, or None when the file has no `image` column


def read_captions(path: str) -> Captions:
    """Captions from CSV or JSONL with `id`, `text` and optional `image` (the image's id) columns."""
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    if path.lower().endswith((".jsonl", ".json")):
        table: dict[str, list] = {}
        with open(path, encoding="utf-8") as fh:
            recs = []
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        recs.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise AlselError(f"{path}: line {n} is not JSON ({e.msg})") from None
        if recs and not all(isinstance(r, dict) for r in recs):
            raise AlselError(f"{path}: every line must be a JSON object")
        for key in ("id", "text", "image"):
            if recs and all(key in r for r in recs):
                table[key] = [r[key] for r in recs]
    else:
        table = _read_table(path)
    missing = [c for c in ("id", "text") if c not in table]
    if missing:
        raise AlselError(f"{path}: caption file needs columns id and text (missing {', '.join(missing)})")
    ids = [str(x) for x in table["id"]]
    if not ids:
        raise AlselError(f"{path}: no captions")
    images = [("" if x is None else str(x)) for x in table["image"]] if "image" in table else None
    return Captions(ids, [str(x) for x in table["text"]], images)


# --------------------------------------------------------------------------- model


@dataclass
class ModelSpec:
    name: str = "ViT-B-32"
    pretrained: str | None = "openai"  # tag, local checkpoint path, or None (random init from the seed)
    config: str | None = None  # a model config JSON for a custom architecture
    seed: int = 0
    precision: str = "fp32"

    def identity(self) -> dict:
        """What determines the embeddings (checked when resuming)."""
        d = asdict(self)
        for key in ("config", "pretrained"):
            p = d[key]
            if p and os.path.exists(p):
                d[key + "_sha256"] = _file_sha(p)
        return d


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def load_model(spec: ModelSpec, device: torch.device):
    """(model, preprocess, tokenizer) from open_clip; errors become AlselError."""
    import open_clip

    if spec.precision not in PRECISIONS:
        raise AlselError(f"--precision {spec.precision!r}: expected fp32, fp16 or bf16")
    name = spec.name
    if spec.config is not None:
        if not os.path.isfile(spec.config):
            raise AlselError(f"{spec.config}: no such model config file")
        try:
            with open(spec.config, encoding="utf-8") as fh:
                cfg = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AlselError(f"{spec.config}: not a JSON model config ({e})") from None
        if not isinstance(cfg, dict) or "embed_dim" not in cfg:
            raise AlselError(f"{spec.config}: not an open_clip model config (no embed_dim)")
        open_clip.add_model_config(spec.config)
    if name not in open_clip.list_models():
        raise AlselError(f"--model {name!r}: unknown open_clip model (see open_clip.list_models(), "
                         f"or give --model-config)")
    pretrained = spec.pretrained
    if pretrained is not None and os.path.sep in pretrained and not os.path.exists(pretrained):
        raise AlselError(f"{pretrained}: no such checkpoint file")
    torch.manual_seed(spec.seed)  # random initialisation (and nothing else) draws from it
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs warnings for random init, retries
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    except RuntimeError as e:
        msg = str(e).splitlines()[0][:200]
        where = pretrained if pretrained and os.path.exists(pretrained) else f"--pretrained {pretrained}"
        raise AlselError(f"{where}: cannot load weights for model {name!r} ({msg})") from None
    finally:
        logging.getLogger().setLevel(quiet)
    model.eval()
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------- images


class ImageFiles(torch.utils.data.Dataset):
    """(index, tensor or None, error or None) per image path; decoding errors never raise."""

    def __init__(self, paths: list[str], preprocess, start: int = 0):
        self.paths, self.preprocess, self.start = paths, preprocess, start

    def __len__(self):
        return len(self.paths) - self.start

    def __getitem__(self, k):
        from PIL import Image

        i = self.start + k
        try:
            with Image.open(self.paths[i]) as im:  # by path: the reason names the file, reproducibly
                x = self.preprocess(im.convert("RGB"))
            return i, x, None
        except Exception as e:  # noqa: BLE001 - any decoding failure skips the image
            return i, None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _as_list(batch):
    return batch


def _encode(model_fn, x: torch.Tensor, precision: str, device: torch.device) -> np.ndarray:
    dtype = PRECISIONS[precision]
    with torch.no_grad():
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            out = model_fn(x.to(device))
    return F.normalize(out.float(), dim=1).cpu().numpy()


# --------------------------------------------------------------------------- the partial file


class Partial:
    """OUT.partial: resizable datasets per modality and a count of inputs done."""

    def __init__(self, path: str, settings: dict, dim: int, dtype: np.dtype, resume: bool):
        self.path = path

        def create(f):
            for g in ("images", "texts"):
                grp = f.create_group(g)
                grp.create_dataset("emb", shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(256, dim))
                grp.create_dataset("src", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
                # [inputs done, rows written, failures written]: one write after the rows are on disk
                grp.create_dataset("progress", data=np.zeros(3, np.int64))
            f["images"].create_dataset("failed_src", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,))
            f["images"].create_dataset("failed_reason", shape=(0,), maxshape=(None,), dtype=STR_DTYPE,
                                       chunks=(1024,))

        self.f, resumed = open_partial(path, settings, resume, create)
        if resumed:
            for g in ("images", "texts"):
                self._truncate(g)

    def _truncate(self, g: str) -> None:
        """Drop rows written after the last recorded progress (a run stopped inside a batch's writes)."""
        grp = self.f[g]
        _, rows, failed = (int(x) for x in grp["progress"][:])
        for name in ("emb", "src"):
            grp[name].resize(rows, axis=0)
        if "failed_src" in grp:
            grp["failed_src"].resize(failed, axis=0)
            grp["failed_reason"].resize(failed, axis=0)

    def done(self, g: str) -> int:
        return int(self.f[g]["progress"][0])

    def append(self, g: str, src: np.ndarray, emb: np.ndarray, done: int,
               failed: list[tuple[int, str]] = ()) -> None:
        grp = self.f[g]
        n = grp["emb"].shape[0]
        if len(src):
            grp["emb"].resize(n + len(src), axis=0)
            grp["emb"][n:] = emb.astype(grp["emb"].dtype)
            grp["src"].resize(n + len(src), axis=0)
            grp["src"][n:] = src
        if failed:
            m = grp["failed_src"].shape[0]
            grp["failed_src"].resize(m + len(failed), axis=0)
            grp["failed_src"][m:] = [i for i, _ in failed]
            grp["failed_reason"].resize(m + len(failed), axis=0)
            grp["failed_reason"][m:] = np.array([r for _, r in failed], dtype=object)
        self.f.flush()
        failed_rows = grp["failed_src"].shape[0] if "failed_src" in grp else 0
        grp["progress"][:] = [done, grp["emb"].shape[0], failed_rows]  # only after the rows are on disk
        self.f.flush()

    def close(self) -> None:
        self.f.close()


# --------------------------------------------------------------------------- the command


@dataclass
class EmbedReport:
    images: int = 0
    failed: list = None
    texts: int = 0
    dropped: list = None
    kind: str = ""


def embed(out: str, *, images: ImageList | None = None, captions: Captions | None = None,
          spec: ModelSpec = ModelSpec(), device: torch.device = torch.device("cpu"), batch_size: int = 64,
          workers: int = 0, dtype: str = "float16", resume: bool = False, created_by: str | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> EmbedReport:
    """Embed images and/or captions into the store `out` (see module docstring).

    `progress(modality, n_done_now, total)` is called after every batch.
    """
    if images is None and captions is None:
        raise AlselError("embed: give --images and/or --captions")
    if batch_size < 1:
        raise AlselError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise AlselError(f"--workers must be >= 0, got {workers}")
    if dtype not in ("float16", "float32"):
        raise AlselError(f"--dtype {dtype!r}: expected float16 or float32")
    if captions is not None and captions.images is not None and images is None:
        raise AlselError("embed: the captions name images (an `image` column) but no --images were given")
    check_output(out)
    model, preprocess, tokenizer = load_model(spec, device)
    dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
        else int(_probe_dim(model, tokenizer, device))
    settings = {"model": spec.identity(), "batch_size": batch_size, "dtype": dtype,
                "images": _digest(images.paths + images.ids) if images else None,
                "captions": _digest(captions.ids + captions.texts) if captions else None}
    n_rows = (len(images.paths) if images else 0) + (len(captions.texts) if captions else 0)
    check_space(out, 2 * n_rows * (dim * np.dtype(dtype).itemsize + 64))  # OUT.partial, then OUT
    with output_lock(out):  # one writer for OUT and OUT.partial for the whole run
        part = Partial(out + ".partial", settings, dim, np.dtype(dtype), resume)
        try:
            if images is not None:
                _embed_images(part, images, model, preprocess, spec.precision, device, batch_size, workers,
                              progress)
            if captions is not None:
                _embed_texts(part, captions, model, tokenizer, spec.precision, device, batch_size, progress)
            report = _finish(part, out, images, captions, spec, created_by)
        finally:
            part.close()
        os.unlink(part.path)
    return report


def _probe_dim(model, tokenizer, device) -> int:
    with torch.no_grad():
        return model.encode_text(tokenizer(["a"]).to(device)).shape[1]


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:32]


def _embed_images(part, images, model, preprocess, precision, device, batch_size, workers, progress):
    start = part.done("images")
    total = len(images.paths)
    if progress is not None:
        progress("images", start, total)
    if start >= total:
        return
    loader = torch.utils.data.DataLoader(ImageFiles(images.paths, preprocess, start), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, collate_fn=_as_list)
    done = start
    for batch in loader:
        ok = [(i, x) for i, x, err in batch if x is not None]
        failed = [(i, err) for i, x, err in batch if x is None]
        emb = np.zeros((0, 0), np.float32)
        if ok:
            emb = _encode(model.encode_image, torch.stack([x for _, x in ok]), precision, device)
        done += len(batch)
        part.append("images", np.array([i for i, _ in ok], np.int64), emb, done, failed)
        if progress is not None:
            progress("images", len(batch), total)


def _embed_texts(part, captions, model, tokenizer, precision, device, batch_size, progress):
    start = part.done("texts")
    total = len(captions.texts)
    if progress is not None:
        progress("texts", start, total)
    for s in range(start, total, batch_size):
        chunk = captions.texts[s:s + batch_size]
        emb = _encode(model.encode_text, tokenizer(chunk), precision, device)
        part.append("texts", np.arange(s, s + len(chunk), dtype=np.int64), emb, s + len(chunk))
        if progress is not None:
            progress("texts", len(chunk), total)


def _finish(part: Partial, out: str, images: ImageList | None, captions: Captions | None, spec: ModelSpec,
            created_by: str | None) -> EmbedReport:
    """Copy the partial file into the final contiguous store, pairing captions with images by id."""
    f = part.f
    report = EmbedReport(failed=[], dropped=[])
    pretrained = spec.pretrained if spec.pretrained is not None else f"none (random init, seed {spec.seed})"
    img_src = f["images/src"][:] if images is not None else np.zeros(0, np.int64)
    if images is not None:
        fs = f["images/failed_src"][:]
        reasons = read_ids(f["images/failed_reason"], part.path)
        report.failed = [(images.ids[i], r) for i, r in zip(fs, reasons)]
    text_image = None
    keep_txt = np.arange(len(captions.ids)) if captions is not None else None
    if captions is not None and captions.images is not None:
        row_of = {images.ids[i]: r for r, i in enumerate(img_src)}
        target = np.array([row_of.get(x, -1) for x in captions.images], dtype=np.int64)
        keep_txt = np.flatnonzero(target >= 0)
        report.dropped = [(captions.ids[j], captions.images[j]) for j in np.flatnonzero(target < 0)]
        text_image = target[keep_txt]
    with StoreWriter(out, model=spec.name, pretrained=pretrained, created_by=created_by) as w:
        if images is not None:
            emb = f["images/emb"]
            w.add_group("images", len(img_src), emb.shape[1], emb.dtype)
            ids = np.array(images.ids, dtype=object)[img_src]
            for s in range(0, len(img_src), COPY_ROWS):
                w.write("images", s, emb[s:s + COPY_ROWS], ids[s:s + COPY_ROWS])
            w.put("images/failed", np.array([i for i, _ in report.failed], dtype=object))
            w.put("images/failed_reason", np.array([r for _, r in report.failed], dtype=object))
            report.images = len(img_src)
        if captions is not None:
            emb = f["texts/emb"]
            ti = text_image if text_image is not None else np.full(len(keep_txt), -1, np.int64)
            w.add_group("texts", len(keep_txt), emb.shape[1], emb.dtype, text_image=ti)
            ids = np.array(captions.ids, dtype=object)[keep_txt]
            for s in range(0, len(keep_txt), COPY_ROWS):
                rows = keep_txt[s:s + COPY_ROWS]
                w.write("texts", s, emb[rows[0]:rows[-1] + 1][rows - rows[0]], ids[s:s + COPY_ROWS])
            w.put("texts/text", np.array(captions.texts, dtype=object)[keep_txt])
            w.put("texts/dropped", np.array([i for i, _ in report.dropped], dtype=object))
            report.texts = len(keep_txt)
    report.kind = ("paired store" if text_image is not None else
                   "image pool" if captions is None else "text pool" if images is None else "store")
    return report
