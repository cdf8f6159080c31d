"""Round trip to annotators: a selection out as files an annotator opens (the CSV `path` column, a Label
Studio import file) and the new captions back (CSV/JSONL, or a Label Studio JSON export).

Label Studio import (one task per selected image, most wanted first):
    [{"data": {"image": "/data/local-files/?d=<path under the document root>", "id": "<pool id>",
               "rank": 1, "score": 0.52}}, ...]
for an image-captioning project (an <Image name="image" value="$image"/> and a <TextArea>). Label Studio
serves a local file at /data/local-files/?d=PATH, PATH relative to its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT,
and only where a local-files storage of the project holds it; the storage path may not be the document
root itself, so the default document root is the folder above the photos (`image_root`). Its JSON export
holds, per task, `data` (as imported) and `annotations[].result[]` with
{"type": "textarea", "value": {"text": [...]}}: every non-empty text of every annotation that was not
cancelled becomes one caption of the task's `data.id`; a task whose annotations were all cancelled (the
annotator pressed Skip) is a skipped photo.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np

from .errors import AlselError
from .figures import sig

LOCAL_FILES_URL = "/data/local-files/?d="
DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
LS_EXPORT_KEYS = {"annotation_id", "annotator"}  # columns of Label Studio's CSV/TSV and JSON_MIN exports


def image_path(image_root: str | None, image_id: str) -> str | None:
    """The file an id names, for stores that record `image_root` (None otherwise)."""
    if not image_root:
        return None
    image_id = str(image_id)
    return image_id if os.path.isabs(image_id) else os.path.join(image_root, *image_id.split("/"))


def document_root(image_root: str, given: str | None = None) -> str:
    """Label Studio's local-files document root: `given`, else $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, else
    the folder above the photos (Label Studio refuses a storage at the document root itself)."""
    root = given or os.environ.get(DOCUMENT_ROOT_ENV) or os.path.dirname(os.path.abspath(image_root))
    return os.path.abspath(root)


def local_files_url(image_root: str, image_id: str, root: str) -> str:
    """The URL Label Studio serves a photo at: /data/local-files/?d=<path relative to the document root>."""
    path = os.path.abspath(image_path(image_root, image_id))
    rel = os.path.relpath(path, root)
    if rel.startswith(".."):
        raise AlselError(f"--labelstudio: {path} is not under the Label Studio document root {root} "
                         f"({DOCUMENT_ROOT_ENV} or --document-root); use a folder above the photos")
    return LOCAL_FILES_URL + quote(rel.replace(os.sep, "/"), safe="/")


def labelstudio_tasks(ids, scores, image_root: str | None, url_prefix: str | None,
                      root: str | None = None) -> list[dict]:
    """Label Studio tasks for the selected ids (in selection order): data.image is `url_prefix` + id, or
    the local-files URL of the photo under `root` (document_root())."""
    if url_prefix is None and not image_root:
        raise AlselError("--labelstudio: the pool records no image_root (it was not made by `alsel embed` from a "
                         "folder), so give --image-url-prefix (data.image = prefix + id)")
    if url_prefix is None:
        root = document_root(image_root, root)
        if os.path.abspath(image_root) == root:
            raise AlselError(f"--labelstudio: the Label Studio document root {root} is the photo folder itself, "
                             f"which Label Studio refuses as a storage; use the folder above it")
    tasks = []
    for rank, (i, s) in enumerate(zip(ids, scores), start=1):
        image = url_prefix + quote(str(i), safe="/") if url_prefix is not None else \
            local_files_url(image_root, i, root)
        data = {"image": image, "id": str(i), "rank": rank}
        if not np.isnan(s):
            data["score"] = sig(s)
        tasks.append({"data": data})
    return tasks


def _texts_of_task(task: dict, path: str, n: int) -> list[str]:
    out = []
    for ann in task.get("annotations") or []:
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        for r in ann.get("result") or []:
            if not isinstance(r, dict):
                continue
            value = r.get("value") or {}
            text = value.get("text") if isinstance(value, dict) else None
            if isinstance(text, str):
                text = [text]
            if r.get("type") == "textarea" or text is not None:
                out.extend(t.strip() for t in (text or []) if isinstance(t, str) and t.strip())
    return out


@dataclass
class NewCaptions:
    """New captions read back: the captions (ids `<image id>#<k>`), the image ids whose every annotation was
    cancelled (skipped in Label Studio) and notes to print."""

    captions: object  # embed.Captions
    cancelled: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def _task_id(task: dict) -> str:
    return f"Label Studio task {task['id']}" if "id" in task else "a task"


def read_labelstudio_export(path: str, tasks: list) -> tuple[list[str], list[str], list[str], list[str]]:
    """(image ids, captions, cancelled image ids, notes) from a Label Studio JSON export of alsel's task file.
    A task without alsel's data.id was not imported from it (a duplicate made by syncing the local-files
    storage): ignored when it holds no caption, an error naming its Label Studio id when it does."""
    images, texts, cancelled, foreign = [], [], [], 0
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise AlselError(f"{path}: task {n} is not a Label Studio task (an object with `data`)")
        image_id = task["data"].get("id")
        found = _texts_of_task(task, path, n)
        if image_id is None:
            if found:
                raise AlselError(f"{path}: {_task_id(task)} (data.image {task['data'].get('image')!r}) has captions "
                                 f"but no data.id, so it was not imported from alsel's task file; it is a "
                                 f"duplicate made by syncing the local-files storage (do not sync it). Caption "
                                 f"the imported task of that photo instead, or delete this one")
            foreign += 1
            continue
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        if not found and anns and all(a.get("was_cancelled") for a in anns):
            cancelled.append(str(image_id))
        for t in found:
            images.append(str(image_id))
            texts.append(t)
    notes = [f"{path}: {foreign} tasks without alsel's data.id (made by syncing the storage) hold no caption "
             f"and were ignored"] if foreign else []
    return images, texts, cancelled, notes


def _not_json_export(path: str, what: str) -> AlselError:
    return AlselError(f"{path}: this is a Label Studio {what} export; alsel reads the JSON export (Export → "
                      f"JSON, or `alsel labelstudio pull`), which keeps each photo's id and every annotation")


def read_new_captions(path: str) -> NewCaptions:
    """New captions for selected images: CSV or JSONL with `id` (the selected image's id) and `text`, or a
    Label Studio JSON export. Returns NewCaptions whose captions have ids `<image id>#<k>` (k from 0 per
    image, in file order), the texts and their image ids."""
    from .embed import Captions, read_table_or_jsonl

    if not os.path.isfile(path):
        raise AlselError(f"{path}: no such file")
    cancelled, notes = [], []
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AlselError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(doc, list):
            raise AlselError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
        flat = [t for t in doc if isinstance(t, dict) and "data" not in t]
        if flat and LS_EXPORT_KEYS & set(flat[0]):
            raise _not_json_export(path, "JSON_MIN")
        if flat and {"id", "text"} <= set(flat[0]) and len(flat) == len(doc):  # a JSON list of id/text records
            images = [str(t.get("id")) for t in doc]
            texts = [("" if t.get("text") is None else str(t.get("text"))).strip() for t in doc]
        else:
            images, texts, cancelled, notes = read_labelstudio_export(path, doc)
    else:
        table = read_table_or_jsonl(path)
        if LS_EXPORT_KEYS & set(table) and "text" not in table:
            raise _not_json_export(path, "CSV/TSV" if not path.lower().endswith(".jsonl") else "JSON_MIN")
        missing = [c for c in ("id", "text") if c not in table]
        if missing:
            raise AlselError(f"{path}: new captions need columns id (the selected image's id) and text "
                             f"(missing {', '.join(missing)})")
        images = [str(x) for x in table["id"]]
        texts = [("" if x is None else str(x)).strip() for x in table["text"]]
    empty = [i for i, t in zip(images, texts) if not t]
    if empty:
        raise AlselError(f"{path}: image {empty[0]!r} has an empty caption")
    if not texts and not cancelled:
        raise AlselError(f"{path}: no captions in the file")
    seen: dict[str, int] = {}
    ids = []
    for i in images:
        k = seen.get(i, 0)
        seen[i] = k + 1
        ids.append(f"{i}#{k}")
    return NewCaptions(Captions(ids, texts, images), cancelled, notes)
