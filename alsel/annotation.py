"""Round trip to annotators: a selection out as files an annotator opens (the CSV `path` column, a Label
Studio import file) and the new captions back (CSV/JSONL, or a Label Studio JSON export).

Label Studio import (one task per selected image, most wanted first):
    [{"data": {"image": "<path or --image-url-prefix + id>", "id": "<pool id>", "rank": 1, "score": 0.52}}, ...]
for an image-captioning project (an <Image name="image" value="$image"/> and a <TextArea>). Its JSON
export holds, per task, `data` (as imported) and `annotations[].result[]` with
{"type": "textarea", "value": {"text": [...]}}: every non-empty text of every annotation that was not
cancelled becomes one caption of the task's `data.id`.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import numpy as np

from .errors import AlselError
from .figures import sig


def image_path(image_root: str | None, image_id: str) -> str | None:
    """The file an id names, for stores that record `image_root` (None otherwise)."""
    if not image_root:
        return None
    image_id = str(image_id)
    return image_id if os.path.isabs(image_id) else os.path.join(image_root, *image_id.split("/"))


def labelstudio_tasks(ids, scores, image_root: str | None, url_prefix: str | None) -> list[dict]:
    """Label Studio tasks for the selected ids (in selection order)."""
    if url_prefix is None and not image_root:
        raise AlselError("--labelstudio: the pool records no image_root (it was not made by `alsel embed` from a "
                         "folder), so give --image-url-prefix (data.image = prefix + id)")
    tasks = []
    for rank, (i, s) in enumerate(zip(ids, scores), start=1):
        image = url_prefix + quote(str(i), safe="/") if url_prefix is not None else image_path(image_root, i)
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


def read_labelstudio_export(path: str, tasks: list) -> tuple[list[str], list[str]]:
    """(image id, caption) pairs from a Label Studio JSON export of the import file above."""
    images, texts = [], []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise AlselError(f"{path}: task {n} is not a Label Studio task (an object with `data`)")
        image_id = task["data"].get("id")
        if image_id is None:
            raise AlselError(f"{path}: task {n} has no data.id (the pool id `alsel select --labelstudio` wrote)")
        for t in _texts_of_task(task, path, n):
            images.append(str(image_id))
            texts.append(t)
    return images, texts


def read_new_captions(path: str):
    """New captions for selected images: CSV or JSONL with `id` (the selected image's id) and `text`, or a
    Label Studio JSON export. Returns embed.Captions with ids `<image id>#<k>` (k from 0 per image, in
    file order), the texts and their image ids."""
    from .embed import Captions, read_table_or_jsonl

    if not os.path.isfile(path):
        raise AlselError(f"{path}: no such file")
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AlselError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(doc, list):
            raise AlselError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
        images, texts = read_labelstudio_export(path, doc)
    else:
        table = read_table_or_jsonl(path)
        missing = [c for c in ("id", "text") if c not in table]
        if missing:
            raise AlselError(f"{path}: new captions need columns id (the selected image's id) and text "
                             f"(missing {', '.join(missing)})")
        images = [str(x) for x in table["id"]]
        texts = [("" if x is None else str(x)).strip() for x in table["text"]]
        empty = [i for i, t in zip(images, texts) if not t]
        if empty:
            raise AlselError(f"{path}: image {empty[0]!r} has an empty caption")
    if not texts:
        raise AlselError(f"{path}: no captions in the file")
    seen: dict[str, int] = {}
    ids = []
    for i in images:
        k = seen.get(i, 0)
        seen[i] = k + 1
        ids.append(f"{i}#{k}")
    return Captions(ids, texts, images)
