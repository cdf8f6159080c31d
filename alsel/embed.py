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

from .errors import AlselError, Interrupted
from .store import StoreWriter
from .h5file import STR_DTYPE, read_ids
from .output import check_output, check_space, open_partial, output_lock

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PATH_COLUMNS = ("path", "image_path", "filepath", "file")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
COPY_ROWS = 65536


# --------------------------------------------------------------------------- inputs


@dataclass
class ImageList:
    paths: list[str]
    ids: list[str]
    root: str | None = None  # absolute folder the ids are paths under (recorded as image_root), if any


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
        return ImageList(paths, ids, os.path.abspath(source))
    base = os.path.dirname(os.path.abspath(source))
    lower = source.lower()
    if lower.endswith((".csv", ".parquet")):
        table = _read_table(source)
        col = path_column or next((c for c in PATH_COLUMNS if c in table), None)
        if col is None or col not in table:
            raise AlselError(f"{source}: no path column (expected one of {', '.join(PATH_COLUMNS)}, or --path-column)")
        given = [str(x) for x in table[col]]
        ids = [str(x) for x in table["id"]] if "id" in table and table["id"] != table[col] else given
    else:
        with open(source, encoding="utf-8") as fh:
            given = [line.strip() for line in fh if line.strip()]
        ids = given
    if not given:
        raise AlselError(f"{source}: no images listed")
    paths = [g if os.path.isabs(g) else os.path.join(base, g) for g in given]
    return ImageList(paths, ids, base if ids is given else None)  # ids that are paths resolve under the list's folder


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


def read_table_or_jsonl(path: str, keys: tuple = ("id", "text", "image")) -> dict[str, list]:
    """Columns of a CSV (all) or a JSONL file (the `keys` every line has)."""
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    if not path.lower().endswith((".jsonl", ".json")):
        return _read_table(path)
    table: dict[str, list] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            recs = []
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        recs.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise AlselError(f"{path}: line {n} is not JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise AlselError(f"{path}: not UTF-8 text ({e.reason})") from None
    if recs and not all(isinstance(r, dict) for r in recs):
        raise AlselError(f"{path}: every line must be a JSON object")
    for key in keys:
        if recs and all(key in r for r in recs):
            table[key] = [r[key] for r in recs]
    return table


def read_captions(path: str) -> Captions:
    """Captions from CSV or JSONL with `id`, `text` and optional `image` (the image's id) columns."""
    table = read_table_or_jsonl(path)
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
    offline = pretrained is not None and not os.path.exists(pretrained) and weights_cached(name, pretrained)
    torch.manual_seed(spec.seed)  # random initialisation (and nothing else) draws from it
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.CRITICAL)  # open_clip logs warnings for random init, retries
    try:
        with hub_offline(offline):  # cached weights: no network round trips (nor their retries)
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


HUB_HOST = "huggingface.co"


def weights_cached(name: str, tag: str) -> bool:
    """Whether the weights of open_clip's (model, tag) are in the local cache. When they are not and their
    host cannot be reached, stop at once with one line (open_clip would retry for about a minute and
    then fail mid-message)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise AlselError(f"--pretrained {tag!r}: not a known tag of model {name!r} (tags: "
                         f"{', '.join(tags) or 'none'}; or give a local checkpoint file, or none)")
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename or "open_clip_pytorch_model.bin"]
        names = [n.replace(".bin", ".safetensors") for n in names if n.endswith(".bin")] + names
        if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
            return True
    if url and os.path.exists(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
        return True
    host = HUB_HOST if hub else (url.split("/")[2] if url.count("/") >= 2 else "")
    if not _reachable(host):
        raise AlselError(f"--model {name} --pretrained {tag}: the weights are not in the local cache and {host} "
                         f"cannot be reached (offline?); download them where there is a network, or give a local "
                         f"checkpoint file with --pretrained PATH")
    return False


def _reachable(host: str, timeout: float = 5.0) -> bool:
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and host == HUB_HOST:
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline(on: bool):
    """huggingface_hub in offline mode (files from the cache only) while `on`."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


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
        """Inputs of modality `g` done so far (recorded after their rows are on disk)."""
        return int(self.f[g]["progress"][0])

    def append(self, g: str, src: np.ndarray, emb: np.ndarray, done: int,
               failed: list[tuple[int, str]] = ()) -> None:
        """Rows of one batch (and its failures), then the progress counter: a stop between the two loses only this
        batch."""
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
        """Close the partial file (it stays on disk until the store is complete)."""
        self.f.close()


# --------------------------------------------------------------------------- the command


@dataclass
class EmbedReport:
    images: int = 0
    failed: list = None
    texts: int = 0
    dropped: list = None
    kind: str = ""
    pool_images: int = 0  # with pool_out


def embed(out: str, *, images: ImageList | None = None, captions: Captions | None = None,
          spec: ModelSpec = ModelSpec(), device: torch.device = torch.device("cpu"), batch_size: int = 64,
          workers: int = 0, dtype: str = "float16", resume: bool = False, created_by: str | None = None,
          progress: Callable[[str, int, int], None] | None = None,
          should_stop: Callable[[], bool] | None = None, pool_out: str | None = None) -> EmbedReport:
    """Embed images and/or captions into the store `out` (see module docstring). With `pool_out`, the
    images that have at least one caption go with their captions into `out` (a paired store) and the
    others into `pool_out` (an image pool), in the same pass.

    `progress(modality, n_done_now, total)` is called after every batch; `should_stop()` is polled after
    every batch: when true, the batch is on disk and Interrupted says how far OUT.partial got.
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
    if pool_out is not None:
        check_pool_split(out, pool_out, images, captions)
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

        def batch_done() -> None:
            if should_stop is not None and should_stop():
                done = part.done("images") + part.done("texts")
                if done < n_rows:
                    raise Interrupted(f"{part.path} holds {done:,} of {n_rows:,} rows; run the same command "
                                      f"with --resume")
        try:
            if images is not None:
                _embed_images(part, images, model, preprocess, spec.precision, device, batch_size, workers,
                              progress, batch_done)
            if captions is not None:
                _embed_texts(part, captions, model, tokenizer, spec.precision, device, batch_size, progress,
                             batch_done)
            report = _finish(part, out, images, captions, spec, created_by, pool_out)
        finally:
            part.close()
        os.unlink(part.path)
    return report


def check_pool_split(out: str, pool_out: str, images: ImageList | None, captions: Captions | None) -> None:
    """--pool-out needs images and captions that name them, some images with a caption and some without."""
    if os.path.abspath(pool_out) == os.path.abspath(out):
        raise AlselError(f"{pool_out}: --pool-out must differ from --out")
    check_output(pool_out)
    if images is None or captions is None or captions.images is None:
        raise AlselError("--pool-out: needs --images and --captions whose `image` column names the images "
                         "(images with a caption go to --out, the others to --pool-out)")
    named = set(captions.images)
    with_caption = sum(1 for i in images.ids if i in named)
    if with_caption == 0:
        raise AlselError(f"--pool-out: no caption names one of the {len(images.ids)} listed images (the `image` "
                         f"column must hold image ids such as {images.ids[0]!r})")
    if with_caption == len(images.ids):
        raise AlselError(f"--pool-out: every one of the {len(images.ids)} images has a caption, so the pool "
                         f"would be empty; leave out --pool-out")


def store_attrs(spec: ModelSpec, images: ImageList | None) -> dict:
    """What a store made by embed records besides model and pretrained: where its images are
    (image_root) and how to embed more captions the same way (alsel merge --captions)."""
    attrs = {"model_config": os.path.abspath(spec.config) if spec.config else "", "embed_seed": spec.seed,
             "embed_precision": spec.precision}
    if images is not None and images.root:
        attrs["image_root"] = images.root
    return attrs


def _probe_dim(model, tokenizer, device) -> int:
    with torch.no_grad():
        return model.encode_text(tokenizer(["a"]).to(device)).shape[1]


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:32]


def _embed_images(part, images, model, preprocess, precision, device, batch_size, workers, progress, batch_done):
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
        batch_done()


def _embed_texts(part, captions, model, tokenizer, precision, device, batch_size, progress, batch_done):
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
        batch_done()


def embed_texts(texts: list[str], spec: ModelSpec, device: torch.device, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 unit rows of `texts` by the model of `spec`, in batches (in memory: for a few thousand
    new captions, as `alsel merge --captions` embeds)."""
    model, _, tokenizer = load_model(spec, device)
    out = []
    for s in range(0, len(texts), batch_size):
        out.append(_encode(model.encode_text, tokenizer(texts[s:s + batch_size]), spec.precision, device))
        if progress is not None:
            progress(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def spec_of_store(attrs: dict, path: str) -> ModelSpec:
    """The model a store made by `alsel embed` was embedded with (its model, pretrained, model_config,
    embed_seed and embed_precision attributes)."""
    pretrained = str(attrs.get("pretrained", ""))
    if "embed_seed" not in attrs:  # only embed records it
        raise AlselError(f"{path}: its embeddings were not made by `alsel embed` (pretrained = {pretrained!r}), so "
                         f"the model is not known; give --model and --pretrained (or --model-config)")
    config = str(attrs.get("model_config", "")) or None
    if config is not None and not os.path.isfile(config):
        raise AlselError(f"{path}: was embedded with the model config {config}, which is no longer there; "
                         f"give --model-config")
    tag = None if pretrained.startswith("none") else pretrained
    return ModelSpec(name=str(attrs["model"]), pretrained=tag, config=config, seed=int(attrs["embed_seed"]),
                     precision=str(attrs.get("embed_precision", "fp32")))


def _finish(part: Partial, out: str, images: ImageList | None, captions: Captions | None, spec: ModelSpec,
            created_by: str | None, pool_out: str | None = None) -> EmbedReport:
    """Copy the partial file into the final contiguous store(s), pairing captions with images by id; with
    `pool_out`, images without a caption go there instead."""
    f = part.f
    report = EmbedReport(failed=[], dropped=[])
    pretrained = spec.pretrained if spec.pretrained is not None else f"none (random init, seed {spec.seed})"
    attrs = store_attrs(spec, images)
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
    paired_rows = np.arange(len(img_src))
    pool_rows = np.zeros(0, np.int64)
    if pool_out is not None:
        described = np.zeros(len(img_src), dtype=bool)
        described[text_image] = True
        paired_rows, pool_rows = np.flatnonzero(described), np.flatnonzero(~described)
        if not len(paired_rows) or not len(pool_rows):
            raise AlselError(f"--pool-out: after skipping unreadable images, {len(paired_rows)} images have a "
                             f"caption and {len(pool_rows)} do not; both stores need at least one")
        text_image = np.searchsorted(paired_rows, text_image)  # rows of the paired store's images
    with contextlib.ExitStack() as stack:
        if pool_out is not None:
            wp = stack.enter_context(StoreWriter(pool_out, model=spec.name, pretrained=pretrained,
                                                 created_by=created_by, attrs=attrs))
            _copy_images(wp, f, images, img_src, pool_rows)
            report.pool_images = len(pool_rows)
        w = stack.enter_context(StoreWriter(out, model=spec.name, pretrained=pretrained, created_by=created_by,
                                            attrs=attrs))
        if images is not None:
            _copy_images(w, f, images, img_src, paired_rows)
            w.put("images/failed", np.array([i for i, _ in report.failed], dtype=object))
            w.put("images/failed_reason", np.array([r for _, r in report.failed], dtype=object))
            report.images = len(paired_rows)
        if captions is not None:
            emb = f["texts/emb"]
            ti = text_image if text_image is not None else np.full(len(keep_txt), -1, np.int64)
            w.add_group("texts", len(keep_txt), emb.shape[1], emb.dtype, text_image=ti)
            ids = np.array(captions.ids, dtype=object)[keep_txt]
            for s in range(0, len(keep_txt), COPY_ROWS):
                rows = keep_txt[s:s + COPY_ROWS]
                w.write("texts", s, emb[rows[0]:rows[-1] + 1][rows - rows[0]], ids[s:s + COPY_ROWS])
            w.add_text(np.array(captions.texts, dtype=object)[keep_txt])
            w.put("texts/dropped", np.array([i for i, _ in report.dropped], dtype=object))
            report.texts = len(keep_txt)
    report.kind = ("paired store" if text_image is not None else
                   "image pool" if captions is None else "text pool" if images is None else "store")
    return report


def _copy_images(w: StoreWriter, f, images: ImageList, img_src: np.ndarray, rows: np.ndarray) -> None:
    """Rows `rows` (ascending) of the partial file's images into a new /images group, in slices."""
    emb = f["images/emb"]
    w.add_group("images", len(rows), emb.shape[1], emb.dtype)
    ids = np.array(images.ids, dtype=object)[img_src[rows]]
    for s in range(0, len(rows), COPY_ROWS):
        part = rows[s:s + COPY_ROWS]
        if len(part):
            w.write("images", s, emb[part[0]:part[-1] + 1][part - part[0]], ids[s:s + COPY_ROWS])
